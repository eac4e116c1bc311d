"""What the two CAVE flows tell a person: table owner notices, failure advice, run names.

The failure artifact itself is the one every flow publishes (`_artifacts.failure_report`); this
module adds what is particular to CAVE:

* **Table owner notices.** A table's owner can attach a notice to it (``notice_text``, e.g.
  "positions were re-aligned on 2024-05-01; use v943 or later"). The real services send it in
  the table's metadata and as a ``Warning: Table Owner Notice ...`` header on queries; the
  official client only prints the header. Here the flows take the notices from the metadata
  they read before any write, log each on the run logger and show them in the run's artifacts,
  failed runs included.
* **Failure advice** that says what to do for the CAVE-specific causes: rows that do not fit
  the schema, a refused token, storage that refuses access, a service that stayed down after
  every retry.
* **The datastack in run names**, also when the request leaves it to the CAVE block.

Example:
    ```python
    from prefect_neurodata.flows._cave_report import notices_markdown, table_notices

    notices = table_notices([{"table_name": "tags", "notice_text": "Provisional."}])
    print(notices_markdown(notices))  # "## Table owner notices" and "- **tags**: Provisional."
    ```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefect import get_run_logger

from prefect_neurodata.clients.cave.annotation_rows import AnnotationValidationError
from prefect_neurodata.clients.cave.base import AuthException
from prefect_neurodata.clients.service_errors import ServiceError
from prefect_neurodata.flows._artifacts import FailureReport
from prefect_neurodata.flows._names import request_value
from prefect_neurodata.tasks.cave import CavePermissionError, load_cave
from prefect_neurodata.tasks.retries import is_transient_error

NOTICES_HEADING = "## Table owner notices"

# How storage says "access denied": pyarrow's S3 errors carry the AWS error name in the text,
# botocore's carry it as the error code.
_DENIED_MARKERS = ("ACCESS_DENIED", "AccessDenied", "Forbidden", "InvalidAccessKeyId")


def table_notices(metas: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{table: notice}`` of the tables whose owners attached a notice (``notice_text``).

    Example:
        ```python
        table_notices([{"table_name": "a", "notice_text": "x"}, {"table_name": "b"}])  # {"a": "x"}
        ```
    """
    return {
        str(meta["table_name"]): " ".join(str(meta["notice_text"]).split())
        for meta in metas
        if meta.get("notice_text")
    }


def notices_markdown(notices: Mapping[str, str]) -> str:
    """The notices as a markdown section for an artifact ("" when there are none)."""
    if not notices:
        return ""
    lines = [NOTICES_HEADING, ""]
    lines += [f"- **{table}**: {text}" for table, text in sorted(notices.items())]
    return "\n".join(lines) + "\n"


def announce_notices(notices: Mapping[str, str], report: FailureReport) -> str:
    """Log each notice on the run logger and add them to the failure report.

    Returns:
        The markdown section (`notices_markdown`) for the run's own artifacts.
    """
    logger = get_run_logger()
    for table, text in sorted(notices.items()):
        logger.warning("Table owner notice on %s: %s", table, text)
    section = notices_markdown(notices)
    if section and section not in report.sections:
        report.sections.append(section)
    return section


def cave_failure_advice(
    report: FailureReport, cave_block: str, aws_block: str | None, rerun: Callable[[], str]
) -> Callable[[BaseException], str | None]:
    """What to do after a CAVE flow failed, by cause (None: the generic advice).

    Args:
        report: The run's failure report (its inputs are read when the failure happens).
        cave_block: Name of the CAVE block the run used.
        aws_block: Name of the AWS block, or None for the AWS environment.
        rerun: What a rerun with the same parameters does (read at failure time, so it can
            name what the run learned, e.g. its ledger).
    """

    def advice(error: BaseException) -> str | None:
        if isinstance(error, AnnotationValidationError):
            return (
                "Nothing was written. Every problem is listed above and in the run's problems "
                "table (row, field, value): fix those rows in the source and run again."
            )
        if isinstance(error, CavePermissionError | AuthException):
            return (
                f"The CAVE services refused the token of block `{cave_block}`, or it lacks the "
                "permission named above. Check the block's token (Blocks page in the Prefect UI) "
                "and ask the datastack's or table's owner for the permission, then run again. "
                + rerun()
            )
        if _storage_denied(error):
            who = f"AWS block `{aws_block}`" if aws_block else "the AWS environment's credentials"
            return (
                f"Storage refused access. Check that {who} may read and write the location "
                "named above (bucket policy, keys), then run again. " + rerun()
            )
        if isinstance(error, ValueError):
            return (
                "The input named above cannot be used; this run stopped before its first "
                "write. Fix it and run again."
            )
        if is_transient_error(error):
            return (
                "A service did not answer after every retry (it is down or overloaded). Wait "
                "a while and run again with the same parameters. " + rerun()
            )
        return None

    return advice


def _storage_denied(error: BaseException) -> bool:
    """Whether S3 (pyarrow or botocore) or the local disk refused access."""
    if isinstance(error, ServiceError | CavePermissionError):
        return False  # an HTTP answer of a service, or a CAVE permission (handled above)
    if isinstance(error, PermissionError):
        return True
    code = getattr(error, "response", None)
    if isinstance(code, Mapping):
        code = code.get("Error", {}).get("Code")
        if code in _DENIED_MARKERS or code == "403":
            return True
    return isinstance(error, OSError) and any(m in str(error) for m in _DENIED_MARKERS)


def datastack_label() -> str:
    """The datastack of the current CAVE flow run, for its name.

    The request's datastack; else the CAVE block's (read once per run, the flow reuses it);
    else ``(datastack from block <name>)`` when the block cannot be read here (the flow then
    reports that with a failure artifact).
    """
    datastack = request_value("datastack")
    if datastack:
        return str(datastack)
    from prefect.runtime import flow_run

    block = flow_run.parameters.get("cave_block")
    try:
        datastack = load_cave(block).datastack_name if block is not None else None
    except Exception:  # a missing or unreadable block fails the flow itself, with its report
        datastack = None
    if datastack:
        return str(datastack)
    if isinstance(block, str):
        return f"(datastack from block {block})"
    return "(datastack from the CAVE block)"
