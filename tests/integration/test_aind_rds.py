"""rds_tables.Client against a real PostgreSQL (COPY bulk writes, quoting, bound parameters)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from prefect_neurodata.clients.aind.rds_tables import Client, RDSCredentials


@pytest.fixture(scope="module")
def client(postgres_url: str) -> Client:
    url = sa.engine.make_url(postgres_url)
    creds = RDSCredentials(
        username=url.username, password=url.password or "unused", host=url.host, port=url.port,
        dbname=url.database,
    )  # fmt: skip
    rds = Client(creds, drivername=url.drivername)
    yield rds
    rds.dispose()


def frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": np.arange(start, start + n, dtype="int64"),
            "name": [
                f'subject,"{i}"\n' if i % 7 == 0 else f"s{i}" for i in range(start, start + n)
            ],
            "empty": ["" if i % 2 else None for i in range(n)],
            "weight": [np.nan if i % 5 == 0 else i / 3 for i in range(n)],
            "ok": [i % 3 == 0 for i in range(n)],
            "when": pd.to_datetime(
                [dt.datetime(2024, 1, 1) + dt.timedelta(minutes=i) for i in range(n)]
            ),
        }
    )


def test_overwrite_append_read_roundtrip_with_copy(client: Client):
    df = frame(2_000)
    client.overwrite_table_with_df(df, "Mixed Case Table")
    client.append_df_to_table(frame(500, start=2_000), "Mixed Case Table")
    back = client.read_table("Mixed Case Table").sort_values("id").reset_index(drop=True)
    expected = pd.concat([df, frame(500, start=2_000)], ignore_index=True)
    assert len(back) == 2_500
    assert back["id"].tolist() == expected["id"].tolist()
    assert back["name"].tolist() == expected["name"].tolist()  # commas, quotes, newlines survive
    # '' stays an empty string and None stays NULL through COPY's CSV format.
    assert back["empty"].tolist() == [None if v is None else v for v in expected["empty"]]
    assert back["weight"].isna().tolist() == expected["weight"].isna().tolist()
    assert np.allclose(back["weight"].dropna(), expected["weight"].dropna())
    assert back["ok"].tolist() == expected["ok"].tolist()
    assert (back["when"] == expected["when"]).all()

    client.overwrite_table_with_df(frame(3), "Mixed Case Table")
    assert len(client.read_table("Mixed Case Table")) == 3


def test_read_table_where_clause_raw_and_bound(client: Client):
    client.overwrite_table_with_df(frame(100), "subjects")
    raw = client.read_table("subjects", where_clause="id < 10")
    assert sorted(raw["id"]) == list(range(10))
    bound = client.read_table("subjects", where_clause="name = :n", params={"n": "s13"})
    assert bound["id"].tolist() == [13]
    injected = client.read_table("subjects", where_clause="name = :n", params={"n": "x' OR '1'='1"})
    assert injected.empty


def test_table_names_are_quoted_identifiers(client: Client):
    client.overwrite_table_with_df(frame(2), 'weird"; DROP TABLE subjects; --')
    assert len(client.read_table('weird"; DROP TABLE subjects; --')) == 2
    assert len(client.read_table("subjects")) > 0  # still there


def test_execute_query_result_readable_after_return(client: Client):
    client.overwrite_table_with_df(frame(20), "q")
    result = client.execute_query(
        "SELECT id, name FROM q WHERE id < :n ORDER BY id", params={"n": 3}
    )
    assert result.keys() == ["id", "name"]
    assert [tuple(r) for r in result.fetchall()] == [(0, 'subject,"0"\n'), (1, "s1"), (2, "s2")]
    count = client.execute_query("SELECT count(*) FROM q").scalar()
    assert count == 20
    update = client.execute_query("UPDATE q SET name = 'x' WHERE id < 5")
    assert update.rowcount == 5 and not update.returns_rows
    with pytest.raises(sa.exc.ResourceClosedError):
        update.fetchall()
    assert client.read_table("q", where_clause="name = 'x'").shape[0] == 5


def test_dtype_argument_is_applied(client: Client):
    client.overwrite_table_with_df(
        frame(5), "typed", dtype={"id": sa.types.BigInteger(), "name": sa.types.Text()}
    )
    types = client.execute_query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'typed'"
    ).fetchall()
    assert dict(types)["id"] == "bigint" and dict(types)["name"] == "text"
