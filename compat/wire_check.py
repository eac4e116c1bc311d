"""Record the HTTP requests the AIND DocDB clients send for each public call.

Run by ``compat/run.py`` once in the official clients' venv and once in ours (with the alias
finder, so ``aind_data_access_api`` is ours there); the two recordings are compared request by
request. It covers the calls whose official tests mock ``requests.Session`` or private methods
(see ``compat/exclusions.json``): for them this is the test that shows our requests are the
official client's. It needs only the standard library, ``requests`` and ``responses``.

Usage: ``python compat/wire_check.py OUT.json [--ours]``
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

HOST = "docdb.example.test"
S3 = "s3://aind-ephys-data-dev-u5u0i5/ecephys_655019_2000-04-04_04-00-00"


def _answer(request: Any) -> tuple[int, dict[str, str], str]:
    """A well-formed answer for whatever endpoint was called."""
    path = urlsplit(request.url).path
    if path.endswith("/count_documents"):
        body: Any = {"total_record_count": 2, "filtered_record_count": 2}
    elif path.endswith(("/find", "/aggregate")) or path.endswith("/schemas"):
        body = []
    elif path.endswith("/bulk_write"):
        body = {"nInserted": 0, "nUpserted": 2, "nMatched": 0, "nModified": 0}
    else:
        body = {"message": "ok"}
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


def _scenarios(document_db: Any) -> dict[str, Callable[[], Any]]:
    metadata = document_db.MetadataDbClient(host=HOST)
    schema = document_db.SchemaDbClient(host=HOST, collection="schemas")
    record = {"_id": "abc-123", "name": "ecephys_655019_2000-04-04_04-00-00", "n": 1}
    return {
        "aggregate_docdb_records": lambda: metadata.aggregate_docdb_records(
            pipeline=[{"$match": {"subject.subject_id": "655019"}}, {"$count": "n"}]
        ),
        "fetch_records_by_filter_list": lambda: metadata.fetch_records_by_filter_list(
            filter_key="name", filter_values=["a", "b"], projection={"location": 1}
        ),
        "insert_one_docdb_record": lambda: metadata.insert_one_docdb_record(record),
        "upsert_one_docdb_record": lambda: metadata.upsert_one_docdb_record(record),
        "upsert_list_of_docdb_records": lambda: metadata.upsert_list_of_docdb_records(
            [record, {**record, "_id": "def-456"}]
        ),
        "delete_one_record": lambda: metadata.delete_one_record("abc-123"),
        "delete_many_records": lambda: metadata.delete_many_records(["abc-123", "def-456"]),
        "generate_data_summary": lambda: metadata.generate_data_summary("abc-123"),
        "register_asset": lambda: metadata.register_asset(S3),
        "register_co_result": lambda: metadata.register_co_result(
            s3_location=S3, name="result", co_asset_id="co-1", co_computation_id="comp-1"
        ),
        "deregister_asset": lambda: metadata.deregister_asset(S3),
        "add_qc_evaluation": lambda: metadata.add_qc_evaluation(
            data_asset_id="abc-123", qc_contents={"qc_evaluation": {"name": "drift"}}
        ),
        "retrieve_schema_records": lambda: schema.retrieve_schema_records(
            schema_version="1.0.0", projection={"name": 1}, limit=3
        ),
    }


def _json_or_text(value: str) -> Any:
    """A JSON-valued query parameter (``filter``, ``projection``) as its value, else the text."""
    try:
        return json.loads(value) if value[:1] in "{[" else value
    except ValueError:
        return value


def request_shape(call: Any) -> dict[str, Any]:
    request = call.request
    parts = urlsplit(request.url)
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    try:
        parsed_body = json.loads(body) if body else None
    except ValueError:
        parsed_body = body
    return {
        "method": request.method,
        "path": parts.path,
        "query": sorted((k, _json_or_text(v)) for k, v in parse_qsl(parts.query, True)),
        "raw_query": parts.query,
        "content_type": request.headers.get("Content-Type"),
        "body": parsed_body,
        "raw_body": body,
        "signed": "Authorization" in request.headers,
    }


def record() -> dict[str, Any]:
    """Each scenario's requests (or the error it raised)."""
    import re

    import responses

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-west-2")
    from aind_data_access_api import document_db

    results: dict[str, Any] = {}
    for name, scenario in _scenarios(document_db).items():
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                mock.add_callback(method, re.compile(rf"https?://{re.escape(HOST)}/.*"), _answer)
            try:
                scenario()
                error = None
            except Exception as exc:  # recorded, compared like a request
                error = f"{type(exc).__name__}: {exc}"
            results[name] = {"requests": [request_shape(c) for c in mock.calls], "error": error}
    return results


def main(argv: list[str], recorder: Callable[[], dict[str, Any]] = record) -> int:
    """Write ``recorder()``'s recording to ``argv[1]``; ``--ours`` first installs the aliases."""
    out = argv[1]
    if "--ours" in argv:
        import alias_plugin  # noqa: F401  (installs the alias finder)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(recorder(), handle, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))


def without_query_params(
    recording: dict[str, Any], params: Sequence[tuple[str, str]]
) -> tuple[dict[str, Any], bool]:
    """``recording`` without the query parameters ``params`` (``(name, value)``; documented
    additions of ours), and whether any was there."""
    found = False
    out: dict[str, Any] = {}
    for name, result in recording.items():
        requests = []
        for request in result["requests"]:
            kept = [kv for kv in request["query"] if tuple(kv) not in params]
            found = found or len(kept) != len(request["query"])
            requests.append({**request, "query": kept})
        out[name] = {**result, "requests": requests}
    return out, found


def compare(official: dict[str, Any], ours: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, notes): requests whose values differ; calls whose bytes differ only in layout.

    Requests are equal when method, path, query values (JSON parameters decoded), content
    type, JSON body and signing agree. Byte differences that leave every value equal (JSON
    whitespace) are listed as notes: they are the documented difference "compact JSON".
    """
    problems: list[str] = []
    notes: list[str] = []
    raw_keys = ("raw_body", "raw_query")
    for name in sorted(official):
        theirs, mine = official[name], ours.get(name)
        if mine is None:
            problems.append(f"{name}: not recorded on ours")
            continue

        def values(result: dict[str, Any]) -> Any:
            requests = [
                {k: v for k, v in r.items() if k not in raw_keys} for r in result["requests"]
            ]
            return requests, result["error"] is None

        if values(theirs) != values(mine):
            sent = json.dumps(theirs)[:400], json.dumps(mine)[:400]
            problems.append(f"{name}: official sent {sent[0]} ours sent {sent[1]}")
            continue
        raw = [[r[k] for k in raw_keys] for r in theirs["requests"]]
        if raw != [[r[k] for k in raw_keys] for r in mine["requests"]]:
            notes.append(name)
    return problems, notes
