"""The pieces of a generated AIND record that both schema versions share.

:class:`RecordParts` holds what the v1 and v2 builders (:mod:`.records_v1`,
:mod:`.records_v2`) have in common: an asset's identity (platform, subject, names and times),
its S3 location, people and funding blocks, pooled processing parameters, QC metrics, the
subject's surgeries, and the padding that grows a record towards its planned size. One
instance serves both versions of a :class:`~.records.RecordGenerator`, so its parameter pool
and bulk-array table are built once per seed, as before the split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, NamedTuple

import numpy as np
import orjson

from prefect_neurodata.sandbox.seed.record_vocabulary import (
    CO_RESULTS_BUCKET,
    FUNDERS,
    INJECTION_MATERIALS,
    OTHER_BUCKETS,
    PEOPLE,
    PLATFORMS,
    PROCESSES,
    QC_METRIC_NAMES,
    STRUCTURES,
    iso_z,
    random_uuid4,
)


def json_size(obj: Any) -> int:
    """Byte length of ``obj`` as compact JSON (what a DocDB page or a bulk_write chunk carries)."""
    return len(orjson.dumps(obj))


class AssetIdentity(NamedTuple):
    """Who and when of one generated asset (shared by the v1 and v2 record builders)."""

    abbr: str
    pname: str
    modalities: Any
    sid: str
    raw_name: str
    derived: bool
    proc_type: str
    pipeline: Any
    name: str
    created_dt: datetime
    modified_dt: datetime


@dataclass(frozen=True)
class AssetPlan:
    """Per-record draws made up front with numpy (vectorised, deterministic)."""

    target_bytes: int
    platform: int
    derived: bool
    acquired: datetime
    modified: datetime
    in_bucket: bool
    rng_seed: int


class RecordParts:
    """Builds the record pieces that the v1 and v2 builders share, from one seed.

    Args:
        seed: Seed of the parameter pool and the bulk-array table.
        bucket: Bucket of assets that have an S3 folder in the sandbox.
    """

    def __init__(self, seed: int, bucket: str) -> None:
        self.seed = seed
        self.bucket = bucket
        self._param_pool: dict[int, list[dict[str, Any]]] = {}
        self._bulk: list[list[float]] | None = None

    def location(
        self, name: str, plan: AssetPlan, rng: random.Random, force: bool, derived: bool
    ) -> str:
        """The ``s3://`` location of asset ``name``.

        Args:
            name: The asset's name.
            plan: Its plan (``in_bucket``: whether it has a folder in the sandbox bucket).
            rng: The record's random stream.
            force: Put it in the sandbox bucket whatever the plan says.
            derived: Whether it is a derived asset (some of those are Code Ocean results).

        Returns:
            ``s3://<bucket>/<name>`` in the sandbox bucket or another production bucket, or a
            Code Ocean results folder.
        """
        if force or plan.in_bucket:
            return f"s3://{self.bucket}/{name}"
        if derived and rng.random() < 0.15:
            return f"s3://{CO_RESULTS_BUCKET}/{random_uuid4(rng)}"
        return f"s3://{rng.choice(OTHER_BUCKETS)}/{name}"

    @staticmethod
    def person(rng: random.Random) -> dict[str, Any]:
        """A person block (investigator) with a name drawn from the people pool.

        Args:
            rng: The record's random stream.

        Returns:
            The person's name, initials and empty registry fields.
        """
        name = rng.choice(PEOPLE)
        return {
            "name": name,
            "abbreviation": "".join(p[0] for p in name.split()),
            "registry": None,
            "registry_identifier": None,
        }

    @staticmethod
    def funding(rng: random.Random) -> list[dict[str, Any]]:
        """The funding sources of one asset: one or two funders, each with its fundees.

        Args:
            rng: The record's random stream.

        Returns:
            The funding blocks; non-AIND funders carry a grant number.
        """
        out = []
        for funder, abbr in rng.sample(FUNDERS, rng.randint(1, 2)):
            out.append(
                {
                    "funder": {"name": funder, "abbreviation": abbr},
                    "grant_number": None
                    if abbr == "AI"
                    else f"1U19NS{rng.randint(100000, 999999)}",
                    "fundee": ", ".join(rng.sample(PEOPLE, 2)),
                }
            )
        return out

    def parameters(self, rng: random.Random, n_keys: int) -> dict[str, Any]:
        """A processing-parameters block of ``n_keys`` keys plus a drawn ``random_seed``.

        Args:
            rng: The record's random stream.
            n_keys: Number of ``param_NNN`` keys.

        Returns:
            A copy of one block of the seeded pool for ``n_keys``.
        """
        # Parameter blocks come from a small seeded pool: building thousands of fresh random
        # dicts dominated generation time, and real pipelines reuse parameter sets anyway.
        pool = self._param_pool.get(n_keys)
        if pool is None:
            prng = random.Random(self.seed * 7919 + n_keys)
            pool = [self._make_parameters(prng, n_keys) for _ in range(32)]
            self._param_pool[n_keys] = pool
        params = dict(pool[rng.randrange(len(pool))])
        params["random_seed"] = rng.getrandbits(31)
        return params

    @staticmethod
    def _make_parameters(rng: random.Random, n_keys: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for k in range(n_keys):
            kind = k % 4
            key = f"param_{k:03d}"
            if kind == 0:
                params[key] = round(rng.uniform(0, 100), 4)
            elif kind == 1:
                params[key] = rng.choice((True, False))
            elif kind == 2:
                params[key] = rng.choice(("auto", "median", "gaussian", "none", "cmr"))
            else:
                params[key] = [rng.randint(0, 384) for _ in range(4)]
        return params

    def _bulk_array(self, rng: random.Random, n_bytes: int) -> list[list[float]]:
        # Channel positions / per-frame shifts: what makes real processing blocks huge. Slices
        # of one seeded table keep this cheap (numpy's tolist was the generator's hot spot).
        n = max(1, n_bytes // 17)
        if self._bulk is None or len(self._bulk) < n:
            table = np.random.default_rng([self.seed, 99]).uniform(0, 4000, (max(n, 30_000), 2))
            self._bulk = table.round(2).tolist()
        off = rng.randrange(len(self._bulk) - n + 1)
        return self._bulk[off : off + n]

    def pad(
        self,
        rec: dict[str, Any],
        plan: AssetPlan,
        rng: random.Random,
        *,
        procs: list[dict[str, Any]],
        parameters_of: Callable[[dict[str, Any]], dict[str, Any]],
        new_proc: Callable[[], dict[str, Any]],
        qc_entries: list[dict[str, Any]] | None,
        new_qc_entry: Callable[[], dict[str, Any]],
    ) -> None:
        """Grow ``rec`` towards its target size with realistic repeated blocks.

        A large deficit is mostly filled by one bulk array in the last process's parameters
        (as real records carry probe channel maps); the rest by extra processes and, when the
        record has quality control, extra QC entries, half and half. The draws happen in this
        order for both schema versions, so a seed always gives the same records.

        Args:
            rec: The record, grown in place.
            plan: Its plan (``target_bytes``).
            rng: The record's random stream.
            procs: The record's list of data processes (non-empty).
            parameters_of: The parameters dict of one process.
            new_proc: Draws one more process.
            qc_entries: The record's list of QC evaluations or metrics; ``None`` without QC.
            new_qc_entry: Draws one more QC entry.
        """
        size = json_size(rec)
        deficit = plan.target_bytes - size
        if deficit > 20_000:
            arr = self._bulk_array(rng, int(deficit * 0.85))
            parameters_of(procs[-1])["channel_positions"] = arr
            size += json_size(arr) + 40
        guard = 0
        while size < plan.target_bytes and guard < 5_000:
            if qc_entries is not None and rng.random() < 0.5:
                entry = new_qc_entry()
                qc_entries.append(entry)
            else:
                entry = new_proc()
                procs.append(entry)
            size += json_size(entry) + 1
            guard += 1

    def identity(
        self,
        plan: AssetPlan,
        rng: random.Random,
        parent: tuple[str, AssetPlan, str] | None,
        short_name_share: float | None,
    ) -> AssetIdentity:
        """Platform, subject id, names and times of one asset (raw, or derived from
        ``parent``); v2 names a ``short_name_share`` of raw assets ``<subject>_<time>``."""
        abbr, pname, modalities = PLATFORMS[plan.platform]
        if parent is not None:
            raw_name, raw_plan, sid = parent
            abbr, pname, modalities = PLATFORMS[raw_plan.platform]
        else:
            sid = str(rng.randint(600_000, 799_999))
            if short_name_share is not None and rng.random() < short_name_share:
                raw_name = f"{sid}_{plan.acquired:%Y-%m-%dT%H%M%S}"
            else:
                raw_name = f"{abbr}_{sid}_{plan.acquired:%Y-%m-%d_%H-%M-%S}"
        derived = parent is not None
        proc_word, proc_type, pipeline = PROCESSES[abbr]
        done = plan.acquired + timedelta(hours=rng.randint(2, 200), seconds=rng.randint(0, 3599))
        name = f"{raw_name}_{proc_word}_{done:%Y-%m-%d_%H-%M-%S}" if derived else raw_name
        created_dt = done if derived else plan.acquired + timedelta(hours=rng.randint(1, 12))
        modified_dt = max(plan.modified, created_dt)
        return AssetIdentity(
            abbr,
            pname,
            modalities,
            sid,
            raw_name,
            derived,
            proc_type,
            pipeline,
            name,
            created_dt,
            modified_dt,
        )

    def qc_metric(self, rng: random.Random, when: datetime) -> dict[str, Any]:
        """The fields of one QC metric common to both versions, with one status entry.

        Args:
            rng: The record's random stream.
            when: Time of the status entry.

        Returns:
            Name, value, description, reference and ``status_history``.
        """
        status = rng.choices(("Pass", "Fail", "Pending"), weights=(8, 1, 1))[0]
        return {
            "name": f"{rng.choice(QC_METRIC_NAMES)} {rng.randint(0, 31)}",
            "value": round(rng.uniform(0, 1), 4),
            "description": "Computed automatically by the processing pipeline",
            "reference": f"figures/qc_{rng.randint(0, 999):03d}.png",
            "status_history": [
                {"evaluator": rng.choice(PEOPLE), "status": status, "timestamp": iso_z(when)}
            ],
        }

    def surgeries(self, rng: random.Random, plan: AssetPlan) -> list[dict[str, Any]]:
        """The subject's surgeries, in the aind-data-schema 1.x shape that v2 records reuse.

        Args:
            rng: The record's random stream.
            plan: The record's plan (surgeries precede its acquisition).

        Returns:
            One to three surgeries, each with a headframe and maybe an injection and a
            craniotomy.
        """
        surgeries = []
        for k in range(rng.randint(1, 3)):
            day = plan.acquired - timedelta(days=30 + 10 * k + rng.randint(0, 9))
            inner: list[dict[str, Any]] = [
                {
                    "procedure_type": "Headframe",
                    "headframe_type": "AI Straight bar",
                    "headframe_part_number": "0160-100-10",
                    "headframe_material": "Titanium",
                    "well_part_number": None,
                    "well_type": None,
                }
            ]
            if rng.random() < 0.7:
                inner.append(
                    {
                        "procedure_type": "Nanoject injection",
                        "injection_materials": [
                            {
                                "material_type": "Virus",
                                "name": rng.choice(INJECTION_MATERIALS),
                                "tars_identifiers": {
                                    "virus_tars_id": f"AiV{rng.randint(10000, 99999)}",
                                    "plasmid_tars_alias": None,
                                    "prep_lot_number": f"VT{rng.randint(1000, 9999)}",
                                    "prep_date": None,
                                    "prep_type": None,
                                    "prep_protocol": None,
                                },
                                "titer": rng.randint(10**12, 5 * 10**13),
                                "titer_unit": "gc/mL",
                            }
                        ],
                        "recovery_time": 10,
                        "recovery_time_unit": "minute",
                        "injection_duration": None,
                        "injection_duration_unit": "minute",
                        "instrument_id": "NJ#2",
                        "protocol_id": "dx.doi.org/10.17504/protocols.io.bgpujvnw",
                        "injection_coordinate_ml": round(rng.uniform(-3.5, 3.5), 2),
                        "injection_coordinate_ap": round(rng.uniform(-5.0, 3.0), 2),
                        "injection_coordinate_depth": [round(rng.uniform(0.2, 4.5), 2)],
                        "injection_coordinate_unit": "millimeter",
                        "injection_coordinate_reference": "Bregma",
                        "bregma_to_lambda_distance": round(rng.uniform(4.0, 4.6), 3),
                        "bregma_to_lambda_unit": "millimeter",
                        "injection_angle": 0,
                        "injection_angle_unit": "degrees",
                        "targeted_structure": rng.choice(STRUCTURES),
                        "injection_hemisphere": rng.choice(("Left", "Right")),
                        "injection_volume": [rng.choice((50, 100, 200))],
                        "injection_volume_unit": "nanoliter",
                    }
                )
            if rng.random() < 0.5:
                inner.append(
                    {
                        "procedure_type": "Craniotomy",
                        "craniotomy_type": rng.choice(
                            ("Circle", "Visual Cortex", "Whole hemisphere")
                        ),
                        "craniotomy_hemisphere": rng.choice(("Left", "Right")),
                        "bregma_to_lambda_distance": None,
                        "craniotomy_size": rng.choice((3, 5)),
                        "craniotomy_size_unit": "millimeter",
                        "implant_part_number": None,
                        "dura_removed": rng.choice((True, False)),
                        "protective_material": "Kwik-Cast",
                        "recovery_time": None,
                    }
                )
            surgeries.append(
                {
                    "procedure_type": "Surgery",
                    "protocol_id": "doi",
                    "start_date": f"{day:%Y-%m-%d}",
                    "experimenter_full_name": rng.choice(PEOPLE),
                    "iacuc_protocol": str(rng.choice((2109, 2115, 2305))),
                    "animal_weight_prior": round(rng.uniform(18, 30), 1),
                    "animal_weight_post": round(rng.uniform(18, 30), 1),
                    "weight_unit": "gram",
                    "anaesthesia": {
                        "type": "isoflurane",
                        "duration": round(rng.uniform(60, 240), 1),
                        "duration_unit": "minute",
                        "level": round(rng.uniform(1.0, 2.5), 1),
                    },
                    "workstation_id": f"SWS {rng.randint(1, 9)}",
                    "procedures": inner,
                    "notes": None,
                }
            )
        return surgeries


class RecordBuilder:
    """Builds the records of one schema version from the generator's shared parts.

    Subclasses name their version's share of ``<subject>_<time>`` raw names and assemble the
    document in :meth:`assemble`; drawing the asset's identity first, here, keeps the order of
    random draws the same for both versions.

    Args:
        parts: The generator's shared record parts (one per seed, shared by both versions).
    """

    #: Share of raw assets named ``<subject>_<time>`` (``None``: none of them).
    short_name_share: ClassVar[float | None] = None

    def __init__(self, parts: RecordParts) -> None:
        self._parts = parts

    def build(
        self,
        plan: AssetPlan,
        rng: random.Random,
        parent: tuple[str, AssetPlan, str] | None,
        force_bucket: bool,
    ) -> dict[str, Any]:
        """Build one record from its plan.

        Args:
            plan: The record's per-record draws.
            rng: The record's random stream (seeded from ``plan.rng_seed``).
            parent: ``(raw name, raw plan, subject id)`` of the raw asset this one derives
                from; ``None`` for a raw asset.
            force_bucket: Put the record in the sandbox bucket whatever its plan says.

        Returns:
            The record, still carrying ``subject_id_`` for the caller to link derived assets.
        """
        identity = self._parts.identity(plan, rng, parent, short_name_share=self.short_name_share)
        return self.assemble(plan, rng, identity, force_bucket)

    def assemble(
        self, plan: AssetPlan, rng: random.Random, identity: AssetIdentity, force_bucket: bool
    ) -> dict[str, Any]:
        """Assemble the version's document around an asset's ``identity`` (see :meth:`build`)."""
        raise NotImplementedError
