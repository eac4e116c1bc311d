"""One measurement of one workload with the OFFICIAL clients (run in ``bench/.official-venv``).

The harness (``python -m bench``) runs this file with the official venv's interpreter, once per
measurement, in a fresh process::

    bench/.official-venv/bin/python bench/official_driver.py SPEC.json

It imports only the official clients (``aind-data-access-api`` 1.10.0, ``caveclient`` 5.25.0),
the standard library, numpy and pandas; the workloads and measurement code it shares with
``bench/ours_driver.py`` are in ``bench/_driver_common.py`` (same import rules).
It prints one line ``BENCH_RESULT {json}``.

The only wiring the official clients need against the loopback sandbox:

* ``aind_data_access_api`` hard-codes ``https://`` in every URL (reference 1.1). The client is
  given, through its public ``session=`` argument, a ``requests.Session`` whose ``https://``
  transport adapter rewrites the scheme of the outgoing URL to ``http://`` right before the
  socket is opened (`PlainHttpAdapter`). Nothing else is touched: the client builds, signs
  (SigV4 covers host, path, query and body, not the scheme), sends and decodes exactly as it
  does in production, with its default ``Session`` settings (no retries, no timeout).
* ``caveclient`` accepts ``http://`` server addresses as they are; it gets the sandbox token
  through ``auth_token=`` and ``write_server_cache=False`` (so ``~/.cloudvolume`` is left alone).
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
import requests
from _driver_common import Clients, main
from requests.adapters import HTTPAdapter


class PlainHttpAdapter(HTTPAdapter):
    """Transport adapter that sends an ``https://`` request over plain ``http://``.

    Only the scheme of ``request.url`` is changed, just before `HTTPAdapter.send` opens the
    connection; headers (including the SigV4 ``Authorization`` computed over host and path),
    body, and the response handling are the official client's own.
    """

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.url and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, *args, **kwargs)


def docdb_client(spec: dict[str, Any], collection: str = "data_assets") -> Any:
    from aind_data_access_api.document_db import MetadataDbClient

    session = requests.Session()
    session.mount("https://", PlainHttpAdapter())
    host = spec["env"]["NEURODATA_DOCDB_HOST"].split("://", 1)[-1]
    return MetadataDbClient(host=host, collection=collection, version="v1", session=session)


def cave_client(spec: dict[str, Any]) -> Any:
    from caveclient import CAVEclient

    env = spec["env"]
    return CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )


def upsert(client: Any, records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    responses = client.upsert_list_of_docdb_records(records)
    # The official client does not raise on a failed chunk: check every response.
    bad = [r.status_code for r in responses if r.status_code >= 300]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(responses)} bulk_write chunks failed: {bad}")
    return len(records), {"requests": len(responses)}


def post_annotations(
    client: Any, table: str, df: pd.DataFrame, params: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    # The server refuses more than 10,000 annotations per request and the official
    # client sends one request per call, so a user loops over chunks of that size.
    ids: list[int] = []
    step = params["chunk"]
    for start in range(0, len(df), step):
        ids.extend(
            client.annotation.post_annotation_df(
                table, df.iloc[start : start + step], position_columns=["pt_position"]
            )
        )
    return len(ids), {"requests": -(-len(df) // step)}


if __name__ == "__main__":
    sys.exit(
        main(sys.argv, "official", Clients(docdb_client, cave_client, upsert, post_annotations))
    )
