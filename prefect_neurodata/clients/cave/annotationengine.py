"""Annotation engine client (seed: ``caveclient.annotationengine``).

Creates and manages annotation tables of an aligned volume and writes annotations to them
(reference sections 1.4 and 5). URLs are keyed by the aligned volume, not the datastack.

What is better than the seed:

* Writes go out in batches of at most 10,000 annotations (the server's limit, 413 above it).
  Everything is validated before the first batch is sent, so bad input fails before anything
  is written, with the row and field named; each batch's body is then built and serialised
  just before it is sent, so memory holds one batch's annotations and the bytes of the
  batches in flight.
* The first batch is sent alone (a refused table or schema fails before anything else is
  sent); the rest go `WRITE_BATCHES_IN_FLIGHT` at a time, so a large upload waits on the
  service's latency about once per window instead of once per batch. Set
  ``client.annotation.batches_in_flight = 1`` for one batch after the other.
* Writes are never retried blindly (a lost answer to a POST could otherwise duplicate rows). If
  a later batch fails, `AnnotationUploadError` says which rows landed (with their new ids) and
  which did not; staged annotations remember what was uploaded, so re-running
  `AnnotationClientV2.upload_staged_annotations` sends only the rest.

Example:
    ```python
    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient("my_datastack")
    stage = client.annotation.stage_annotations("my_cell_types")
    stage.add(cell_type="basket", classification_system="manual", pt_position=[10, 20, 30])
    new_ids = client.annotation.upload_staged_annotations(stage)
    ```
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pandas as pd
import requests

from prefect_neurodata.clients.http import (
    ServiceError,
    TransportConfig,
    decode_json,
    dumps,
    imap_bounded,
    loads,
)
from prefect_neurodata.errors import NeurodataError

from . import endpoints as _endpoints
from .annotation_rows import (
    MAX_ANNOTATIONS_PER_REQUEST,
    AnnotationValidationError,
    check_annotation_id,
    check_array,
    check_sendable,
    chunk_ranges,
    id_list,
    shorten,
)
from .base import (
    ApiVersion,
    ClientBase,
    Service,
    document_shared_args,
    resolve_transport,
)
from .tools.stage import StagedAnnotations

__all__ = [
    "AnnotationClient",
    "AnnotationClientV2",
    "AnnotationUploadError",
    "AnnotationValidationError",
    "MAX_ANNOTATIONS_PER_REQUEST",
    "update_id_map",
]

logger = logging.getLogger("prefect_neurodata.cave.annotation")

SERVER_KEY = "ae_server_address"

PERMISSIONS = ("PRIVATE", "GROUP", "PUBLIC")
TABLE_NAME_PATTERN = re.compile(r"^[a-z_]+[a-z0-9_]*$")


def checked_table_name(table_name: Any, field: str = "table_name") -> str:
    """``table_name`` if the annotation engine accepts it as a table name.

    The one home of the rule (`TABLE_NAME_PATTERN`): the client checks it before creating a
    table, the upload flow's request before any write.

    Args:
        table_name: The proposed name.
        field: The name of the argument or field, for the message.

    Raises:
        ValueError: Naming ``field``, the value and the rule.

    Example:
        ```python
        checked_table_name("my_synapses")  # -> "my_synapses"
        ```
    """
    if not isinstance(table_name, str) or not TABLE_NAME_PATTERN.match(table_name):
        raise ValueError(
            f"{field} {table_name!r} is invalid: use lower-case letters, digits and "
            "underscores, starting with a letter or underscore"
        )
    return table_name


def checked_voxel_resolution(voxel_resolution: Any, field: str = "voxel_resolution") -> list[float]:
    """``voxel_resolution`` as three positive finite floats (nm per voxel).

    The one home of the rule for a resolution we send or write positions at: a new table's
    voxel resolution here and in the upload flow, the CAVE block's and the snapshot flow's
    ``desired_resolution``.

    Args:
        voxel_resolution: The proposed resolution.
        field: The name of the argument or field, for the message.

    Raises:
        ValueError: Naming ``field`` and the value when it is not three positive numbers.

    Example:
        ```python
        checked_voxel_resolution([4, 4, 40])  # -> [4.0, 4.0, 40.0]
        ```
    """
    try:
        resolution = [float(x) for x in voxel_resolution]
    except (TypeError, ValueError):
        raise ValueError(
            f"{field} must be three numbers (nm per voxel), got {voxel_resolution!r}"
        ) from None
    if len(resolution) != 3 or not all(x > 0 and math.isfinite(x) for x in resolution):
        raise ValueError(f"{field} must be three positive numbers, got {voxel_resolution!r}")
    return resolution


_UNSURE_STATUSES = frozenset({502, 504})

WRITE_BATCHES_IN_FLIGHT = 4
"""Batches of one write call under way at once after the first (capped by the pool size).

A 100,000-row upload is 10 requests; each waits on the service's latency (100-200 ms behind
a load balancer) as well as its insert, so overlapping them hides most of the waiting."""

_URL_IDS_CHARS = 6000  # keeps ``?annotation_ids=...`` (commas sent as %2C) under line limits


class AnnotationUploadError(requests.HTTPError, NeurodataError):
    """A batched write failed after some batches had already been written.

    It is a `requests.HTTPError`, so seed-style ``except requests.HTTPError`` still catches it;
    the original error is its ``__cause__``.

    Attributes:
        table_name: The table written to.
        done: Rows (0-based positions in the input) that were written.
        not_done: Rows that were not written.
        uncertain: Rows of the failed batch whose fate is unknown (a gateway error or a lost
            answer: the server may have written them); check before resending them.
        result: What the written batches returned (ids, or ``{old_id: new_id}``).
        status_code: HTTP status of the failed batch, if it was an HTTP error.
    """

    def __init__(
        self,
        message: str,
        *,
        table_name: str,
        done: range | list[int],
        not_done: range | list[int],
        result: Any,
        uncertain: range | list[int] = range(0),
        status_code: int | None = None,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(message, response=response)
        self.table_name = table_name
        self.done = done
        self.not_done = not_done
        self.uncertain = uncertain
        self.result = result
        self.status_code = status_code


@document_shared_args
def AnnotationClient(  # noqa: N802 - seed name
    server_address: str,
    dataset_name: str | None = None,
    aligned_volume_name: str | None = None,
    auth_client: Any = None,
    api_version: ApiVersion = "latest",
    verify: bool | str = True,
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    over_client: Any = None,
    transport: TransportConfig | None = None,
) -> AnnotationClientV2:
    """Build the annotation engine client.

    Args:
        server_address: The local server, e.g. ``https://minnie.microns-daf.com``.
        dataset_name: Legacy name of the aligned volume (used when ``aligned_volume_name`` is
            None).
        aligned_volume_name: The aligned volume whose tables are managed.
        api_version: 2 or "latest" (the annotation engine has no version endpoint).

    Returns:
        An `AnnotationClientV2`.
    """
    config = resolve_transport(transport, verify, max_retries, pool_maxsize, pool_block)
    volume = aligned_volume_name or dataset_name
    return SERVICE.connect(
        server_address, auth_client, api_version, config, volume, over_client=over_client
    )


def _plain(value: Any) -> Any:
    """``default`` hook of the body encoder: what orjson does not encode itself.

    numpy values become plain Python ones (``item()``/``tolist()``), so a float32 is sent
    with its exact double value and a datetime64 as ``item()`` gives it, and pandas' missing
    markers (``NA``, ``NaT``) become null; anything else is encoded as the shared ``dumps``
    does (timestamps, decimals, sets, ...).
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is pd.NA or value is pd.NaT:
        return None
    return loads(dumps(value))


# Without OPT_SERIALIZE_NUMPY, numpy values reach `_plain` (see its docstring for why).
_BODY_OPTIONS = orjson.OPT_NON_STR_KEYS
_SIMPLE_TYPES = (str, int, float, bool, type(None))


def _encode(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain, option=_BODY_OPTIONS)


def _encode_batch(key: str, records: Sequence[Any], start: int, table_name: str) -> bytes:
    """The JSON body ``{key: records}``; a bad value raises `ValueError` naming its row."""
    try:
        return _encode({key: records})
    except TypeError as exc:
        for offset, record in enumerate(records):
            try:
                _encode(record)
            except TypeError:
                try:
                    dumps(record, what=f"{key}[{start + offset}]")
                except TypeError as named:
                    raise ValueError(f"{table_name}: {named}") from exc
                raise ValueError(
                    f"{table_name}: cannot serialise {key}[{start + offset}] to JSON: {exc}"
                ) from exc
        raise ValueError(f"{table_name}: cannot serialise {key} to JSON: {exc}") from exc


def update_id_map(answer: Any, old_ids: Sequence[int] = ()) -> dict[str, int]:
    """``{"old_id": new_id}`` from the annotation engine's answer to a PUT of updates.

    The real service answers a list with one ``{old_id: new_id}`` mapping per annotation (its
    ``update_annotation`` result for each); a single merged mapping, and a bare list of new ids
    in request order (``old_ids``), are read too.

    Example:
        ```python
        assert update_id_map([{"7": 70}, {"8": 80}]) == {"7": 70, "8": 80}
        ```
    """
    if not answer:
        return {}
    if isinstance(answer, Mapping):
        return {str(k): int(v) for k, v in answer.items()}
    merged: dict[str, int] = {}
    items = list(answer)
    if all(isinstance(item, Mapping) for item in items):
        for item in items:
            merged.update({str(k): int(v) for k, v in item.items()})
        return merged
    if len(items) == len(old_ids) and all(isinstance(i, int) for i in items):
        return {str(old): int(new) for old, new in zip(old_ids, items, strict=True)}
    raise ValueError(f"unexpected answer to an annotation update: {shorten(answer)}")


class AnnotationClientV2(ClientBase):
    """Annotation engine client for API version 2 (tables keyed by aligned volume).

    Use the `AnnotationClient` factory or ``CAVEclient(...).annotation``.
    """

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        aligned_volume_name: str | None,
        verify: bool | str = True,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        schema_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self._aligned_volume_name = aligned_volume_name
        self._schema_client = schema_client
        self.batches_in_flight = max(1, min(WRITE_BATCHES_IN_FLIGHT, self.transport.pool_maxsize))
        """Batches of one write sent at once after the first; 1 sends them one after the
        other, so new ids follow the input order as with caveclient."""

    @property
    def aligned_volume_name(self) -> str | None:
        """The aligned volume whose tables this client manages."""
        return self._aligned_volume_name

    @property
    def schema_client(self) -> Any:
        """The schema service client (the framework client's, by default)."""
        if self._schema_client is None and self.fc is not None:
            self._schema_client = self.fc.schema
        return self._schema_client

    def _av(self, aligned_volume_name: str | None) -> str:
        av = aligned_volume_name or self.aligned_volume_name
        if not av:
            raise ValueError("no aligned_volume_name given and none set on the client")
        return av

    # -- tables ------------------------------------------------------------------------------
    def get_tables(self, aligned_volume_name: str | None = None) -> list[str]:
        """Names of the (valid) tables of the aligned volume."""
        return self._json(
            "GET", self._url("tables", aligned_volume_name=self._av(aligned_volume_name))
        )

    def get_annotation_count(self, table_name: str, aligned_volume_name: str | None = None) -> int:
        """Number of annotations in a table (live, not a materialization version)."""
        url = self._url(
            "table_count", aligned_volume_name=self._av(aligned_volume_name), table_name=table_name
        )
        return int(self._json("GET", url))

    def get_table_metadata(
        self, table_name: str, aligned_volume_name: str | None = None
    ) -> dict[str, Any]:
        """Metadata of a table; ``voxel_resolution_x/y/z`` become ``voxel_resolution``.

        The server's ``Warning: Table Owner Notice`` header is logged.
        """
        url = self._url(
            "table_info", aligned_volume_name=self._av(aligned_volume_name), table_name=table_name
        )
        meta = dict(self._json("GET", url))
        keys = ("voxel_resolution_x", "voxel_resolution_y", "voxel_resolution_z")
        if all(k in meta for k in keys):
            meta["voxel_resolution"] = [meta.pop(k) for k in keys]
        return meta

    def create_table(
        self,
        table_name: str,
        schema_name: str,
        description: str,
        voxel_resolution: list[float],
        reference_table: str | None = None,
        track_target_id_updates: bool | None = None,
        flat_segmentation_source: str | None = None,
        user_id: int | None = None,
        aligned_volume_name: str | None = None,
        write_permission: str = "PRIVATE",
        read_permission: str = "PUBLIC",
        notice_text: str | None = None,
    ) -> requests.Response:
        """Create an annotation table with a schema from the schema service.

        Arguments are checked before anything is sent: the table name must match
        ``^[a-z_]+[a-z0-9_]*$``, the description must be non-empty, the resolution three
        positive numbers, the permissions ``PRIVATE``/``GROUP``/``PUBLIC``; a reference schema
        (one requiring ``target_id``) needs ``reference_table`` (checked when a schema client is
        available).

        Returns:
            The server's response (its text is the new table's name).

        Raises:
            ValueError: An argument is invalid (the message names it).

        Example:
            ```python
            client.annotation.create_table(
                "my_synapses", "synapse", "Manual synapses of 81 chandelier cells [by A.B.]",
                [4, 4, 40],
            )
            ```
        """
        av = self._av(aligned_volume_name)
        checked_table_name(table_name)
        if not isinstance(schema_name, str) or not schema_name:
            raise ValueError(f"schema_name must be a non-empty string, got {schema_name!r}")
        if not isinstance(description, str) or not description.strip():
            raise ValueError("description must be a non-empty string saying what the table holds")
        resolution = checked_voxel_resolution(voxel_resolution)
        for name, value in (
            ("write_permission", write_permission),
            ("read_permission", read_permission),
        ):
            if value not in PERMISSIONS:
                raise ValueError(f"{name} must be one of {PERMISSIONS}, got {value!r}")
        if reference_table is not None and reference_table == table_name:
            raise ValueError("reference_table must name another table, not the new table itself")
        if reference_table is None:
            self._check_not_reference_schema(schema_name)
        metadata: dict[str, Any] = {
            "description": description,
            "voxel_resolution_x": resolution[0],
            "voxel_resolution_y": resolution[1],
            "voxel_resolution_z": resolution[2],
            "write_permission": write_permission,
            "read_permission": read_permission,
        }
        if user_id is not None:
            metadata["user_id"] = int(user_id)
        if notice_text is not None:
            metadata["notice_text"] = notice_text
        if flat_segmentation_source is not None:
            metadata["flat_segmentation_source"] = flat_segmentation_source
        if reference_table is not None:
            table_metadata: dict[str, Any] = {"reference_table": reference_table}
            if track_target_id_updates is not None:
                table_metadata["track_target_id_updates"] = bool(track_target_id_updates)
            metadata["table_metadata"] = table_metadata
        body = {"schema_type": schema_name, "table_name": table_name, "metadata": metadata}
        return self._request("POST", self._url("tables", aligned_volume_name=av), json=body)

    def _check_not_reference_schema(self, schema_name: str) -> None:
        schema_client = self.schema_client
        if schema_client is None:
            return
        try:
            schema = schema_client.schema_definition(schema_name)
        except ServiceError as exc:
            if exc.status_code == 404:
                raise ValueError(f"schema_name {schema_name!r} is not a known schema") from None
            raise
        ref = str(schema.get("$ref", "")).rsplit("/", 1)[-1]
        definition = schema.get("definitions", {}).get(ref, {})
        if "target_id" in definition.get("required", []):
            raise ValueError(
                f"schema {schema_name!r} is a reference schema: pass reference_table= naming "
                "the table its target_id points to"
            )

    def delete_table(self, table_name: str, aligned_volume_name: str | None = None) -> Any:
        """Mark a table as deleted (owner only)."""
        url = self._url(
            "table_info", aligned_volume_name=self._av(aligned_volume_name), table_name=table_name
        )
        return self._json("DELETE", url)

    def update_metadata(
        self,
        table_name: str,
        description: str | None = None,
        flat_segmentation_source: str | None = None,
        read_permission: str | None = None,
        write_permission: str | None = None,
        user_id: int | None = None,
        notice_text: str | None = None,
        aligned_volume_name: str | None = None,
    ) -> Any:
        """Change a table's metadata (owner only); None leaves a field unchanged.

        ``notice_text=""`` (or ``"none"``) removes the notice.
        """
        metadata: dict[str, Any] = {}
        if description is not None:
            if not str(description).strip():
                raise ValueError("description must not be empty")
            metadata["description"] = description
        if flat_segmentation_source is not None:
            metadata["flat_segmentation_source"] = flat_segmentation_source
        for name, value in (
            ("read_permission", read_permission),
            ("write_permission", write_permission),
        ):
            if value is None:
                continue
            if value not in PERMISSIONS:
                raise ValueError(f"{name} must be one of {PERMISSIONS}, got {value!r}")
            metadata[name] = value
        if user_id is not None:
            metadata["user_id"] = int(user_id)
        if notice_text is not None:
            metadata["notice_text"] = (
                "" if notice_text.strip().lower() in ("", "none") else notice_text
            )
        if not metadata:
            raise ValueError("update_metadata needs at least one field to change")
        body = {"table_name": table_name, "metadata": metadata}
        return self._json(
            "PUT", self._url("tables", aligned_volume_name=self._av(aligned_volume_name)), json=body
        )

    # -- annotations -------------------------------------------------------------------------
    def get_annotation(
        self,
        table_name: str,
        annotation_ids: int | Iterable[int],
        aligned_volume_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Annotations by id (flattened dicts), fetched in URL-sized batches."""
        if np.isscalar(annotation_ids):
            ids = [int(annotation_ids)]  # type: ignore[arg-type]
        else:
            ids = [int(x) for x in annotation_ids]  # type: ignore[union-attr]
        url = self._url(
            "annotations", aligned_volume_name=self._av(aligned_volume_name), table_name=table_name
        )
        out: list[dict[str, Any]] = []
        for group in self._id_groups(ids):
            out.extend(self._json("GET", url, params={"annotation_ids": ",".join(group)}))
        return out

    @staticmethod
    def _id_groups(ids: Sequence[int]) -> list[list[str]]:
        groups: list[list[str]] = []
        current: list[str] = []
        size = 0
        for i in ids:
            text = str(i)
            if current and size + len(text) + 3 > _URL_IDS_CHARS:
                groups.append(current)
                current, size = [], 0
            current.append(text)
            size += len(text) + 3
        if current:
            groups.append(current)
        return groups

    @staticmethod
    def _as_records(data: Any, what: str) -> list[dict[str, Any]]:
        if isinstance(data, Mapping):
            return [dict(data)]
        if isinstance(data, pd.DataFrame):
            raise ValueError(f"{what}: pass a DataFrame to the *_df method instead")
        records = list(data)
        for i, row in enumerate(records):
            if not isinstance(row, Mapping):
                raise ValueError(f"{what}: annotation {i} must be a dict, got {type(row).__name__}")
        return [dict(r) for r in records]

    def _write(
        self,
        method: str,
        table_name: str,
        records: Sequence[Any] | _FrameRows,
        *,
        key: str,
        aligned_volume_name: str | None,
        batch_size: int = MAX_ANNOTATIONS_PER_REQUEST,
        on_batch: Any = None,
    ) -> list[Any]:
        """Send ``records`` in batches, each body built and serialised just before it is sent.

        A list is checked in full (every batch is serialised and dropped) before the first
        request; a `_FrameRows` was checked when it was built. The first batch goes alone,
        so a request the service refuses outright (no table, no permission, a schema error)
        fails before anything else is sent; the rest go up to `batches_in_flight` at a time
        (`_sent_batches`). Answers and ``on_batch`` calls come in batch order.
        """
        total = len(records)
        batches = chunk_ranges(total, batch_size)
        url = self._url(
            "annotations", aligned_volume_name=self._av(aligned_volume_name), table_name=table_name
        )

        def body(rows: range) -> bytes:
            part: Sequence[Any]
            if isinstance(records, _FrameRows):
                part = records.records(rows)
            else:
                part = records[rows.start : rows.stop]
            return _encode_batch(key, part, rows.start, table_name)

        if not isinstance(records, _FrameRows):
            # Values JSON or the service cannot carry (inf/NaN would go out as null, ids past
            # int64 fail in the database) stop the call before its first request.
            check_sendable(records, f"{method} to {table_name!r}")
            for rows in batches:
                body(rows)

        def send(data: bytes) -> requests.Response:
            return self._request(
                method,
                url,
                data=data,
                headers={"Content-Type": "application/json"},
                idempotent=False,
            )

        written: list[range] = []
        results: list[Any] = []
        failed: list[tuple[range, Exception]] = []
        for rows, outcome in self._sent_batches(body, send, batches):
            if isinstance(outcome, Exception):
                failed.append((rows, outcome))
                continue
            answer = decode_json(outcome) if outcome.content else None
            written.append(rows)
            results.append(answer)
            if on_batch is not None:
                on_batch(rows, answer)
        if failed:
            first_rows, first_error = failed[0]
            if first_rows.start == 0:
                raise first_error  # nothing was sent after it: the seed's plain error
            raise self._upload_error(
                method, table_name, total, written, failed, results
            ) from first_error
        return results

    def _sent_batches(
        self,
        build: Callable[[range], bytes],
        send: Callable[[bytes], requests.Response],
        batches: Sequence[range],
    ) -> Iterator[tuple[range, requests.Response | Exception]]:
        """Send each batch once and yield ``(rows, response or error)`` in batch order.

        The first batch is sent alone; then up to `batches_in_flight` are under way at once
        (`imap_bounded`), which hides the service's per-request latency (each batch is still
        sent exactly once: writes are never retried blindly). Bodies are built one at a time
        in the calling thread, just before their batch is handed to a sender, so memory holds
        one batch's annotations plus the serialised bytes of the batches in flight. After a
        failure no further batch is started, and the batches already under way are waited for
        and yielded, so the caller learns the fate of every batch that was sent. A
        ``ValueError`` from ``build`` is the failure of a batch that was not sent.
        """
        stopped = False

        def bodies() -> Iterator[tuple[range, bytes | ValueError]]:
            # Consumed by `imap_bounded` in the calling thread, one batch ahead of each send.
            for rows in batches:
                if stopped:
                    return
                try:
                    yield rows, build(rows)
                except ValueError as exc:
                    yield rows, exc
                    return

        def post(
            item: tuple[range, bytes | ValueError],
        ) -> tuple[range, requests.Response | Exception]:
            rows, data = item
            if isinstance(data, ValueError):
                return rows, data
            try:
                return rows, send(data)
            except requests.RequestException as exc:
                return rows, exc

        pending = bodies()
        first = next(pending, None)
        if first is None:
            return
        rows, outcome = post(first)
        yield rows, outcome
        if isinstance(outcome, Exception):
            return
        for rows, result in imap_bounded(post, pending, max_workers=self.batches_in_flight):
            stopped = stopped or isinstance(result, Exception)
            yield rows, result

    @staticmethod
    def _upload_error(
        method: str,
        table_name: str,
        total: int,
        written: list[range],
        failed: list[tuple[range, Exception]],
        results: list[Any],
    ) -> AnnotationUploadError:
        """The error of a write whose batches after the first did not all land.

        ``done`` and ``not_done`` are ranges when the written rows are a prefix of the input
        (always so with one batch in flight), else sorted lists of row positions.
        """
        first_rows, first_error = failed[0]
        # A gateway error or a lost answer says nothing about whether the backend applied the
        # batch; any other error (or a body that could not be built) means it did not.
        done = _compact(_rows_of(written))
        uncertain = _compact(_rows_of(rows for rows, exc in failed if _unsure(exc)))
        settled = {*done, *uncertain}
        not_done = _compact(p for p in range(total) if p not in settled)
        fates = [f"rows {_spans(done)} were written"]
        if uncertain:
            fates.append(f"rows {_spans(uncertain)} may or may not have been written")
        if not_done:
            fates.append(f"rows {_spans(not_done)} were not")
        return AnnotationUploadError(
            f"{method} of annotations to {table_name!r} failed at rows "
            f"{first_rows.start}-{first_rows.stop - 1}: {', '.join(fates)} ({first_error})",
            table_name=table_name,
            done=done,
            not_done=not_done,
            uncertain=uncertain,
            result=_merge(results),
            status_code=getattr(first_error, "status_code", None),
            response=getattr(first_error, "response", None),
        )

    def post_annotation(
        self, table_name: str, data: dict | list[dict], aligned_volume_name: str | None = None
    ) -> list[int]:
        """Insert annotations (nested schema dicts) and return their new ids, in input order.

        Sent in batches of at most 10,000. A failed later batch raises `AnnotationUploadError`
        naming the rows that were and were not written.
        """
        records = self._as_records(data, "post_annotation")
        return _merge(
            self._write(
                "POST",
                table_name,
                records,
                key="annotations",
                aligned_volume_name=aligned_volume_name,
            )
        )

    def update_annotation(
        self, table_name: str, data: dict | list[dict], aligned_volume_name: str | None = None
    ) -> dict[str, int]:
        """Replace annotations (each dict needs its ``id``); returns ``{"old_id": new_id}``.

        Each update invalidates the old row and inserts a new one with a new id. The service
        answers one ``{old_id: new_id}`` per annotation; they are merged into one mapping.
        """
        records = self._as_records(data, "update_annotation")
        old_ids = [
            check_annotation_id(r.get("id"), i, "update_annotation") for i, r in enumerate(records)
        ]
        answers = self._write(
            "PUT",
            table_name,
            records,
            key="annotations",
            aligned_volume_name=aligned_volume_name,
        )
        mapping: dict[str, int] = {}
        for rows, answer in zip(chunk_ranges(len(records)), answers, strict=False):
            mapping.update(update_id_map(answer, old_ids[rows.start : rows.stop]))
        return mapping

    def delete_annotation(
        self,
        table_name: str,
        annotation_ids: int | Iterable[int],
        aligned_volume_name: str | None = None,
    ) -> list[int]:
        """Mark annotations as deleted (soft delete); returns the ids marked."""
        values = [annotation_ids] if np.isscalar(annotation_ids) else list(annotation_ids)  # type: ignore[arg-type]
        ids = id_list(values, "delete_annotation")
        return _merge(
            self._write(
                "DELETE",
                table_name,
                ids,
                key="annotation_ids",
                aligned_volume_name=aligned_volume_name,
            )
        )

    # -- DataFrames --------------------------------------------------------------------------
    @staticmethod
    def process_position_columns(
        df: pd.DataFrame, position_columns: Iterable[str] | Mapping[str, str] | None
    ) -> list[dict[str, Any]]:
        """Turn a DataFrame into nested annotation dicts ready to post.

        Args:
            df: One row per annotation, columns named after schema fields.
            position_columns: None: every column ending in ``_position`` (a field ``X`` gets
                column ``X_position``); a list of such column names; or a mapping
                ``{column: field}``. A position given as ``<col>_x/_y/_z`` columns is
                accepted too.

        Returns:
            ``[{"other_field": value, ..., "pt": {"position": [x, y, z]}}, ...]``; missing
            optional values (None/NaN/NA/NaT) are left out. Numeric columns give plain Python
            numbers; cells of object columns are passed on as they are (numpy values inside
            them are converted when the body is serialised).

        Raises:
            ValueError: A position column is missing or a position is not 3 coordinates, or
                an object column holds a value that cannot be sent as JSON (row and column
                are named).
        """
        frame = _FrameRows(df, position_columns)
        return frame.records(range(len(frame)))

    def post_annotation_df(
        self,
        table_name: str,
        df: pd.DataFrame,
        position_columns: Iterable[str] | Mapping[str, str] | None,
        aligned_volume_name: str | None = None,
    ) -> list[int]:
        """Insert the rows of a DataFrame (see `process_position_columns`); returns new ids.

        Every row is checked before the first request; each batch of 10,000 rows is then turned
        into annotations and serialised just before it is sent.
        """
        frame = _FrameRows(df, position_columns, table_name=table_name)
        return _merge(
            self._write(
                "POST",
                table_name,
                frame,
                key="annotations",
                aligned_volume_name=aligned_volume_name,
            )
        )

    def update_annotation_df(
        self,
        table_name: str,
        df: pd.DataFrame,
        position_columns: Iterable[str] | Mapping[str, str] | None,
        aligned_volume_name: str | None = None,
    ) -> dict[str, int]:
        """Update annotations from a DataFrame with an ``id`` column; returns
        ``{"old_id": new_id}``."""
        if "id" not in df.columns:
            raise ValueError("update_annotation_df needs an 'id' column")
        data = self.process_position_columns(df, position_columns)
        return self.update_annotation(table_name, data, aligned_volume_name=aligned_volume_name)

    # -- staged annotations ------------------------------------------------------------------
    def stage_annotations(
        self,
        table_name: str | None = None,
        schema_name: str | None = None,
        update: bool = False,
        id_field: bool = False,
        table_resolution: Sequence[float] | None = None,
        annotation_resolution: Sequence[float] | None = None,
    ) -> StagedAnnotations:
        """A `StagedAnnotations` collecting annotations validated against the table's schema.

        Args:
            table_name: Table to stage for (its schema and resolution are looked up).
            schema_name: Schema to use when no table is given.
            update: Stage updates of existing annotations (an ``id`` field is required).
            id_field: Let new annotations carry their own ``id``.
            table_resolution: Voxel resolution of the table (looked up if a table is given).
            annotation_resolution: Resolution of the positions you will add; with a table
                resolution, positions are rescaled to the table's.
        """
        if table_name is None and schema_name is None:
            raise ValueError("stage_annotations needs a table_name or a schema_name")
        if table_name is not None:
            meta = self.get_table_metadata(table_name)
            schema_name = schema_name or meta.get("schema_type") or meta.get("schema")
            if table_resolution is None:
                table_resolution = meta.get("voxel_resolution")
        if annotation_resolution is not None and table_resolution is None:
            warnings.warn(
                "no table resolution known: annotation positions cannot be rescaled",
                stacklevel=2,
            )
        schema_client = self.schema_client
        if schema_client is None:
            raise ValueError("stage_annotations needs a schema client (use CAVEclient)")
        schema = schema_client.schema_definition(schema_name)
        return StagedAnnotations(
            schema,
            name=table_name or schema_name,
            update=update,
            id_field=id_field,
            table_resolution=table_resolution,
            annotation_resolution=annotation_resolution,
            table_name=table_name,
        )

    def upload_staged_annotations(
        self,
        staged_annos: StagedAnnotations,
        aligned_volume_name: str | None = None,
        *,
        batch_size: int = MAX_ANNOTATIONS_PER_REQUEST,
    ) -> list[int] | dict[str, int]:
        """Upload the not-yet-uploaded rows of a `StagedAnnotations` (POST, or PUT for updates).

        Rows are marked uploaded batch by batch (with their new ids), so after a failure the
        same call sends only what is missing. Nothing is retried blindly: when the failed batch's
        fate is unknown (a 502/504 or a lost answer), its rows stay unmarked and the error's
        ``uncertain`` names them (positions among the rows this call tried to send); check the
        table (``get_annotation_count``) before re-running, or they may be written twice.

        Returns:
            New ids of the rows uploaded by this call, or ``{"old_id": new_id}`` for updates.

        Raises:
            ValueError: The stage has no table name.
            AnnotationUploadError: A batch after the first failed (rows written so far are
                marked in the stage).
        """
        if not staged_annos.table_name:
            raise ValueError(
                "the staged annotations have no table_name; set staged_annos.table_name first"
            )
        pending = staged_annos.pending()
        if not pending:
            return {} if staged_annos.is_update else []
        positions = [p for p, _ in pending]
        records = [r for _, r in pending]

        def mark(rows: range, answer: Any) -> None:
            indices = positions[rows.start : rows.stop]
            if staged_annos.is_update:
                old_ids = [records[i]["id"] for i in rows]
                mapping = update_id_map(answer, old_ids)
                ids = [mapping.get(str(old)) for old in old_ids]
            else:
                ids = list(answer or [])
                if len(ids) != len(indices):
                    raise RuntimeError(
                        f"the server returned {len(ids)} ids for {len(indices)} annotations"
                    )
            staged_annos.mark_uploaded(indices, ids)

        results = self._write(
            "PUT" if staged_annos.is_update else "POST",
            staged_annos.table_name,
            records,
            key="annotations",
            aligned_volume_name=aligned_volume_name,
            batch_size=batch_size,
            on_batch=mark,
        )
        if staged_annos.is_update:
            old_ids = [r["id"] for r in records]
            mapping: dict[str, int] = {}
            for rows, answer in zip(chunk_ranges(len(records), batch_size), results, strict=False):
                mapping.update(update_id_map(answer, old_ids[rows.start : rows.stop]))
            return mapping
        return _merge(results)


def _unsure(exc: Exception) -> bool:
    """Whether a failed write may still have been applied (a gateway error or a lost answer)."""
    status = getattr(exc, "status_code", None)
    return isinstance(exc, requests.RequestException) and (
        status in _UNSURE_STATUSES
        or (status is None and not isinstance(exc, requests.ConnectTimeout))
    )


def _rows_of(batches: Iterable[range]) -> list[int]:
    return [position for rows in batches for position in rows]


def _compact(positions: Iterable[int]) -> range | list[int]:
    """Sorted row positions as a `range` when they are consecutive, else as a list."""
    ordered = sorted(positions)
    if not ordered:
        return range(0)
    if ordered[-1] - ordered[0] + 1 == len(ordered):
        return range(ordered[0], ordered[-1] + 1)
    return ordered


def _spans(positions: range | list[int]) -> str:
    """``0-9999, 20000-29999``: sorted positions as runs of consecutive rows."""
    runs: list[str] = []
    for _, run in itertools.groupby(enumerate(positions), lambda pair: pair[1] - pair[0]):
        members = [position for _, position in run]
        first, last = members[0], members[-1]
        runs.append(f"{first}-{last}" if last != first else f"{first}")
    return ", ".join(runs)


def _merge(results: list[Any]) -> Any:
    """Combine per-batch answers: lists are concatenated, dicts merged."""
    if not results:
        return []
    if all(isinstance(r, dict) for r in results):
        merged: dict[str, Any] = {}
        for r in results:
            merged.update(r)
        return merged
    if all(isinstance(r, list) for r in results):
        out: list[Any] = []
        for r in results:
            out.extend(r)
        return out
    return results[0] if len(results) == 1 else results


class _FrameRows:
    """The rows of a DataFrame as annotation dicts, checked up front and built slice by slice.

    Positions are gathered into ``(n, 3)`` arrays and every column's missing values into a
    mask when the object is built (so bad input fails before any write, naming the row and
    column); `records` then makes the dicts of one slice with column operations. Missing
    values (None, NaN, NA, NaT) of non-position columns are left out of the row.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        position_columns: Iterable[str] | Mapping[str, str] | None,
        *,
        table_name: str | None = None,
    ) -> None:
        where = f"{table_name}: " if table_name else ""
        columns = [str(c) for c in df.columns]
        if position_columns is None:
            mapping = {c: c[: -len("_position")] for c in columns if c.endswith("_position")}
            for c in columns:
                if c.endswith("_position_x") and f"{c[:-2]}_y" in columns:
                    mapping.setdefault(c[:-2], c[: -len("_position_x")])
        elif isinstance(position_columns, Mapping):
            mapping = {str(k): str(v) for k, v in position_columns.items()}
        else:
            mapping = {}
            for c in position_columns:
                c = str(c)
                if not c.endswith("_position"):
                    raise ValueError(
                        f"position column {c!r} must end in '_position' (or pass a mapping "
                        "{column: field})"
                    )
                mapping[c] = c[: -len("_position")]
        self._length = len(df)
        self._points: list[tuple[str, np.ndarray]] = []
        used: set[str] = set()
        for col, field in mapping.items():
            if col in columns:
                points = _position_array(df, col)
                used.add(col)
            elif all(f"{col}_{a}" in columns for a in "xyz"):
                triple = [f"{col}_{a}" for a in "xyz"]
                points = df[triple].to_numpy()
                used.update(triple)
            else:
                raise ValueError(f"position column {col!r} is not in the DataFrame")
            if points.dtype.kind in "fu":
                check_array(points, col, df.index, where)
            self._points.append((field, points))
        # Columns by position, so duplicate labels cannot turn a column into a frame.
        self._plain: list[tuple[str, pd.Series, np.ndarray | None, bool]] = []
        for j, label in enumerate(df.columns):
            if str(label) in used:
                continue
            series = df.iloc[:, j]
            missing = _missing_mask(series)
            if series.dtype.kind in "fu":
                present = series[~missing] if missing.any() else series
                check_array(_numbers(present), str(label), present.index, where)
            box = series.dtype == object and _check_cells(series, missing, str(label), where)
            self._plain.append((str(label), series, missing if missing.any() else None, box))

    def __len__(self) -> int:
        return self._length

    def records(self, rows: range) -> list[dict[str, Any]]:
        """The annotation dicts of ``rows`` (positions ``rows.start`` to ``rows.stop - 1``)."""
        out: list[dict[str, Any]] = [{} for _ in rows]
        for key, series, missing, box in self._plain:
            values = series.iloc[rows.start : rows.stop].tolist()
            if box:
                values = [_boxed(v) for v in values]
            if missing is None:
                for record, value in zip(out, values, strict=True):
                    record[key] = value
            else:
                skip = missing[rows.start : rows.stop].tolist()
                for record, value, gone in zip(out, values, skip, strict=True):
                    if not gone:
                        record[key] = value
        for field, points in self._points:
            for record, position in zip(out, points[rows.start : rows.stop].tolist(), strict=True):
                record[field] = {"position": position}
        return out


def _position_array(df: pd.DataFrame, col: str) -> np.ndarray:
    """The ``(n, 3)`` positions of a column of ``[x, y, z]`` cells."""
    values = df[col].to_list()
    try:
        points = np.array(values)
    except (ValueError, TypeError):
        points = None
    if points is not None and points.shape == (len(values), 3) and points.dtype.kind in "iufb":
        return points
    # Slow path: find the bad row to name it, or keep the cell-by-cell conversion for cells
    # numpy does not stack into numbers directly (mixed containers, None, ...).
    bad = [i for i, v in enumerate(values) if np.size(v) != 3]
    if bad:
        raise ValueError(
            f"column {col!r}, row {df.index[bad[0]]!r}: a position needs 3 "
            f"coordinates, got {values[bad[0]]!r}"
        )
    return np.asarray([np.asarray(v).tolist() for v in values])


def _missing_mask(series: pd.Series) -> np.ndarray:
    """Cells left out of a row: None, NaN, NA, NaT (also numpy NaN/NaT scalars)."""
    missing = np.array(series.isna(), dtype=bool)
    if series.dtype == object and missing.any():
        # ``isna`` also flags Decimal("NaN"), which is kept (and sent as null).
        cells = series.to_numpy()
        for i in np.flatnonzero(missing):
            if isinstance(cells[i], Decimal):
                missing[i] = False
    return missing


def _numbers(series: pd.Series) -> np.ndarray:
    """A float or unsigned column as a plain numpy array (nullable dtypes included)."""
    values = series.to_numpy()
    if values.dtype == object:
        values = values.astype(float if series.dtype.kind == "f" else np.uint64)
    return values


def _boxed(value: Any) -> Any:
    """numpy datetimes of a cell as pandas gives them in rows (sent as ISO text, not ints)."""
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value)
    if isinstance(value, np.timedelta64):
        return pd.Timedelta(value)
    return value


def _check_cells(series: pd.Series, missing: np.ndarray, column: str, where: str) -> bool:
    """Fail on the first cell of an object column that cannot be sent as JSON.

    Returns:
        Whether the column holds numpy datetimes (see `_boxed`).
    """
    box = False
    for i, value in enumerate(series.to_numpy()):
        if missing[i]:
            continue
        if type(value) in _SIMPLE_TYPES:
            if type(value) in (int, float):
                check_sendable([{column: value}], f"{where}column {column!r}", i)
            continue
        if isinstance(value, (np.datetime64, np.timedelta64)):
            box = True
            value = _boxed(value)
        try:
            _encode(value)
        except TypeError as exc:
            raise ValueError(
                f"{where}column {column!r}, row {series.index[i]!r}: value of type "
                f"{type(value).__name__} cannot be sent as JSON ({exc})"
            ) from exc
    return box


SERVICE = Service(
    AnnotationClientV2,
    SERVER_KEY,
    _endpoints.annotation_common,
    # The legacy (dataset-keyed) API has no client here, so only version 2 is negotiated.
    {2: _endpoints.annotation_endpoints_v2},
)
"""The annotation engine as `AnnotationClient` connects to it."""
