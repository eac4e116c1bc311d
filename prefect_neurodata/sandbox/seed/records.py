"""Deterministic generator of realistic AIND DocDB records (v1 and v2 collections).

Records follow ``reference/aind-docdb-api.md`` section 7: aind-data-schema 1.x ``Metadata``
documents for ``v1`` and 2.x documents for ``v2``, UUID4 string ``_id``, ``location`` equal to
``s3://<bucket>/<name>``, ISO string timestamps, raw and derived assets (derived names reuse the
raw name as prefix), optional core blocks, a few legacy ``external_links`` shapes, and sizes from
about 5 KB to well over 100 KB with a long tail, so paging caps and write chunking get exercised.

The same ``seed`` always yields the same records (given the same ``anchor`` date).

This module plans the records and hands each one to the builder of its schema version;
the builders live in :mod:`.records_v1` and :mod:`.records_v2`, the pieces they share in
:mod:`.record_parts` and the values they draw from in :mod:`.record_vocabulary`.

Example:
    >>> from prefect_neurodata.sandbox.seed.records import RecordGenerator
    >>> gen = RecordGenerator(seed=1)
    >>> recs = gen.generate(10, version="v1")
    >>> all(r["location"].endswith(r["name"]) for r in recs)
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

# The files the DocDB stand-in's ``register`` reads are the files the seed writes.
from prefect_neurodata.sandbox.docdb.assets import CORE_FILES
from prefect_neurodata.sandbox.seed.record_parts import AssetPlan, RecordParts
from prefect_neurodata.sandbox.seed.record_vocabulary import MIN_BYTES, PLATFORM_WEIGHTS, PLATFORMS
from prefect_neurodata.sandbox.seed.records_v1 import V1RecordBuilder
from prefect_neurodata.sandbox.seed.records_v2 import V2RecordBuilder


def sample_sizes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Target JSON sizes (bytes) of ``n`` records.

    Mostly 5-20 KB (log-normal around 8 KB; a full v1 record with QC is about 12 KB), a tail of
    4 % 30-100 KB records (session/rig documents, long processing histories), about 1 % over
    100 KB and a few of 250-400 KB (huge processing parameters), so that every collection of
    20 or more records holds at least one record of over 100 KB.
    """
    sizes = np.exp(rng.normal(np.log(8_000), 0.4, n))
    tail = rng.random(n) < 0.04
    sizes[tail] = rng.uniform(30_000, 100_000, int(tail.sum()))
    if n >= 20:
        big = rng.choice(n, size=max(1, n // 100), replace=False)
        sizes[big] = rng.uniform(101_000, 160_000, big.size)
        huge = rng.choice(big, size=max(1, n // 2_000), replace=False)
        sizes[huge] = rng.uniform(250_000, 400_000, huge.size)
    return np.clip(sizes, MIN_BYTES + 200, None).astype(np.int64)


class RecordGenerator:
    """Builds realistic v1/v2 DocDB records deterministically from a seed.

    Args:
        seed: Seed of every random draw.
        bucket: Bucket of assets that have an S3 folder in the sandbox.
        anchor: "Now" of the generated history (default: today 00:00 UTC); about 10 % of
            records are modified within the 14 days before it.
        in_bucket_fraction: Share of records located in ``bucket``; the others point at other
            production buckets or Code Ocean results (no folder in the sandbox).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        bucket: str = "aind-open-data",
        anchor: datetime | None = None,
        in_bucket_fraction: float = 0.0,
    ) -> None:
        self.seed = int(seed)
        self.bucket = bucket
        now = datetime.now(timezone.utc)
        self.anchor = anchor or now.replace(hour=0, minute=0, second=0, microsecond=0)
        self.in_bucket_fraction = in_bucket_fraction
        # One set of parts for both versions: the parameter pool and bulk-array table are
        # built once per generator, so a v2 record padded after v1 ones draws the same slices.
        parts = RecordParts(self.seed, bucket)
        self._v1_builder = V1RecordBuilder(parts)
        self._v2_builder = V2RecordBuilder(parts)

    def plan(self, n: int, *, stream: int) -> list[AssetPlan]:
        """Draw the per-record parameters of ``n`` records of one collection/stream."""
        rng = np.random.default_rng([self.seed, stream])
        sizes = sample_sizes(n, rng)
        platforms = rng.choice(len(PLATFORMS), size=n, p=PLATFORM_WEIGHTS / PLATFORM_WEIGHTS.sum())
        derived = rng.random(n) < 0.4
        start = datetime(2022, 1, 3, tzinfo=timezone.utc)
        span = (self.anchor - timedelta(days=20) - start).total_seconds()
        acquired = np.sort(rng.uniform(0, span, n))
        recent = rng.random(n) < 0.1
        lag = np.where(recent, 0.0, rng.exponential(3 * 86_400, n))
        in_bucket = rng.random(n) < self.in_bucket_fraction
        seeds = rng.integers(0, 2**62, n)
        plans = []
        for i in range(n):
            acq = start + timedelta(seconds=float(acquired[i]))
            if recent[i]:
                mod = self.anchor - timedelta(seconds=float(rng.uniform(3_600, 13 * 86_400)))
            else:
                mod = acq + timedelta(days=2, seconds=float(lag[i]))
            plans.append(
                AssetPlan(
                    target_bytes=int(sizes[i]),
                    platform=int(platforms[i]),
                    derived=bool(derived[i]),
                    acquired=acq.replace(microsecond=0),
                    modified=min(mod, self.anchor - timedelta(minutes=5)),
                    in_bucket=bool(in_bucket[i]),
                    rng_seed=int(seeds[i]),
                )
            )
        return plans

    def generate(
        self, n: int, *, version: str = "v1", stream: int | None = None, force_bucket: bool = False
    ) -> list[dict[str, Any]]:
        """Generate ``n`` records for collection ``version`` (``"v1"`` or ``"v2"``).

        Args:
            n: Number of records.
            version: ``"v1"`` (aind-data-schema 1.x) or ``"v2"`` (2.x).
            stream: Independent random stream (defaults to one per version); use another value
                for extra assets such as S3 folders not registered in DocDB.
            force_bucket: Put every record in ``self.bucket``.

        Returns:
            The records, in creation order.
        """
        return list(
            self.iter_generate(n, version=version, stream=stream, force_bucket=force_bucket)
        )

    def iter_generate(
        self, n: int, *, version: str = "v1", stream: int | None = None, force_bucket: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Like :meth:`generate`, yielding records one by one (lets callers insert as they go)."""
        if version not in ("v1", "v2"):
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        stream = (1 if version == "v1" else 2) if stream is None else stream
        build = self._v1_builder.build if version == "v1" else self._v2_builder.build
        raws: list[tuple[str, AssetPlan, str]] = []
        for plan in self.plan(n, stream=stream):
            rng = random.Random(plan.rng_seed)
            parent = None
            if plan.derived and raws:
                parent = raws[rng.randrange(max(0, len(raws) - 200), len(raws))]
            rec = build(plan, rng, parent, force_bucket)
            if parent is None:
                raws.append((rec["name"], plan, rec["subject_id_"]))
            del rec["subject_id_"]
            yield rec


def core_files(record: dict[str, Any], version: str) -> dict[str, Any]:
    """The core metadata blocks of ``record`` that are present, keyed by S3 file stem."""
    names = CORE_FILES["v1" if version == "v1" else "v2"]
    return {k: record[k] for k in names if record.get(k) is not None}
