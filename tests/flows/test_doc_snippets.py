"""Every fenced Python example in README.md and docs/*.md runs, against the sandbox.

The examples are written for the real services. Each file's snippets run in order in one
namespace (as a reader would paste them), inside the test session's real Prefect server, with
the production endpoints and placeholders of :data:`PRODUCTION_TO_SANDBOX` swapped for the
sandbox's. A snippet that reaches for anything not in that table fails the test, so an example
cannot silently rot (a renamed field, a removed argument, an unknown block key).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# docs/testing.md shows excerpts of examples/synapse_tagging (not standalone programs); that
# example's own tests run the code the excerpts come from.
EXCERPT_DOCUMENTS = {"testing.md"}
DOCUMENTS = [
    REPO / "README.md",
    *sorted(p for p in (REPO / "docs").glob("*.md") if p.name not in EXCERPT_DOCUMENTS),
]
FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.flows


def python_snippets(path: Path) -> list[str]:
    """The fenced ``python`` blocks of a Markdown file, in order."""
    return [match.group(1) for match in FENCED_PYTHON.finditer(path.read_text())]


def production_to_sandbox(env: dict[str, str]) -> dict[str, str]:
    """What each production endpoint or placeholder in the docs becomes on the sandbox."""
    return {
        '"https://api.allenneuraldynamics.org"': repr(env["NEURODATA_DOCDB_HOST"]),
        # The seed clients take the bare host name (they add https:// themselves).
        '"api.allenneuraldynamics.org"': repr(env["NEURODATA_DOCDB_HOST"]),
        '"https://global.daf-apis.com"': repr(env["NEURODATA_CAVE_GLOBAL_URL"]),
        '"minnie65_public"': repr(env["NEURODATA_CAVE_DATASTACK"]),
        'token="..."': f"token={env['NEURODATA_CAVE_TOKEN']!r}",
        "s3://lab-bucket/": f"s3://{env['NEURODATA_S3_BUCKET']}/",
        # A temporary local Dask cluster instead of the docs' long-lived scheduler.
        'address="tcp://dask-scheduler:8786"': (
            'cluster_class="distributed.LocalCluster", '
            'cluster_kwargs={"n_workers": 2, "threads_per_worker": 1}'
        ),
    }


def test_documents_have_python_examples() -> None:
    found = {path.name: len(python_snippets(path)) for path in DOCUMENTS}
    assert found["README.md"] >= 2, found
    assert sum(found.values()) >= 4, found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_python_examples_run_against_the_sandbox(
    document: Path,
    prefect_api: str,
    sandbox_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # A user's AWS credentials come from the usual chain (environment here), as the docs say.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, sandbox_env[key])
    monkeypatch.setenv("AWS_ENDPOINT_URL", sandbox_env["AWS_ENDPOINT_URL"])
    monkeypatch.chdir(tmp_path)
    replacements = production_to_sandbox(sandbox_env)
    namespace: dict[str, Any] = {"__name__": f"snippets_of_{document.stem}"}
    for number, snippet in enumerate(python_snippets(document), start=1):
        code = snippet
        for production, local in replacements.items():
            code = code.replace(production, local)
        compiled = compile(code, f"{document.name} python example {number}", "exec")
        exec(compiled, namespace)  # noqa: S102 - running the documentation is the test
