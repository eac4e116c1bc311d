"""Deterministic generator of realistic AIND DocDB records (v1 and v2 collections).

Records follow ``reference/aind-docdb-api.md`` section 7: aind-data-schema 1.x ``Metadata``
documents for ``v1`` and 2.x documents for ``v2``, UUID4 string ``_id``, ``location`` equal to
``s3://<bucket>/<name>``, ISO string timestamps, raw and derived assets (derived names reuse the
raw name as prefix), optional core blocks, a few legacy ``external_links`` shapes, and sizes from
about 5 KB to well over 100 KB with a long tail, so paging caps and write chunking get exercised.

The same ``seed`` always yields the same records (given the same ``anchor`` date).

Example:
    >>> from prefect_neurodata.sandbox.seed.records import RecordGenerator
    >>> gen = RecordGenerator(seed=1)
    >>> recs = gen.generate(10, version="v1")
    >>> all(r["location"].endswith(r["name"]) for r in recs)
    True
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np
import orjson

# The files the DocDB stand-in's ``register`` reads are the files the seed writes.
from prefect_neurodata.sandbox.docdb.assets import CORE_FILES

SCHEMA_URL = "https://raw.githubusercontent.com/AllenNeuralDynamics/aind-data-schema/main/src/aind_data_schema/core/{}.py"
CO_RESULTS_BUCKET = "codeocean-s3datasetsbucket-1u41qdg42ur9"
OTHER_BUCKETS = ("aind-ephys-data", "aind-ophys-data", "aind-private-data-prod-o5171v")
MIN_BYTES = 5_000

# (platform abbreviation, platform name, modalities)
PLATFORMS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "ecephys",
        "Electrophysiology platform",
        (("Extracellular electrophysiology", "ecephys"), ("Behavior videos", "behavior-videos")),
    ),
    ("SmartSPIM", "SmartSPIM platform", (("Selective plane illumination microscopy", "SPIM"),)),
    ("exaSPIM", "ExaSPIM platform", (("Selective plane illumination microscopy", "SPIM"),)),
    (
        "single-plane-ophys",
        "Single-plane optical physiology",
        (("Planar optical physiology", "pophys"),),
    ),
    (
        "multiplane-ophys",
        "Multiplane optical physiology",
        (("Planar optical physiology", "pophys"),),
    ),
    (
        "behavior",
        "Behavior platform",
        (("Behavior", "behavior"), ("Behavior videos", "behavior-videos")),
    ),
    (
        "FIP",
        "Frame-projected independent-fiber photometry platform",
        (("Fiber photometry", "fib"),),
    ),
    (
        "HCR",
        "Hybridization chain reaction platform",
        (("Selective plane illumination microscopy", "SPIM"),),
    ),
)
PLATFORM_WEIGHTS = np.array([0.28, 0.14, 0.05, 0.12, 0.08, 0.18, 0.1, 0.05])
PROCESSES = {
    "ecephys": ("sorted", "Spike sorting", "aind-ephys-pipeline-kilosort25"),
    "SmartSPIM": ("stitched", "Image tile fusing", "aind-smartspim-pipeline"),
    "exaSPIM": ("stitched", "Image tile fusing", "aind-exaspim-pipeline"),
    "single-plane-ophys": ("processed", "Video motion correction", "aind-ophys-pipeline"),
    "multiplane-ophys": ("processed", "Video motion correction", "aind-ophys-pipeline"),
    "behavior": ("processed", "Behavior analysis", "aind-behavior-pipeline"),
    "FIP": ("processed", "Fiber photometry processing", "aind-fip-dff"),
    "HCR": ("processed", "Image spot detection", "aind-hcr-pipeline"),
}
GENOTYPES = (
    "wt/wt",
    "Pvalb-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
    "Sst-IRES-Cre/wt;Ai14(RCL-tdT)/wt",
    "Vip-IRES-Cre/wt;Ai162(TIT2L-GC6s-ICL-tTA2)/wt",
    "Slc17a7-IRES2-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt",
    "Dbh-Cre-KI/wt",
    "Chat-IRES-Cre-neo/wt",
)
PROJECTS = (
    "Discovery-Neuromodulator circuit dynamics during foraging",
    "Thalamus in the middle",
    "Cognitive flexibility in patch foraging",
    "Brain Computer Interface",
    "Learning mFISH-V1omFISH",
    "Neurobiology of Action",
    "OpenScope",
    None,
)
PEOPLE = (
    "Anna Apple",
    "Bruce Bell",
    "Chen Cho",
    "Dana Diaz",
    "Emil Ekdahl",
    "Farah Fofana",
    "Goro Gato",
    "Hana Hill",
    "Ivan Ilic",
    "Jun Jeong",
)
STRUCTURES = ("VISp", "MOp", "CA1", "LC", "VTA", "ACA", "ORB", "SSp-bfd", "PL", "MOs", "RSP")
INJECTION_MATERIALS = (
    "AAV2/1-Syn-FLEX-GCaMP8m",
    "AAV-PHP.eB-hSyn-jGCaMP7f",
    "AAVrg-CAG-tdTomato",
    "AAV5-EF1a-DIO-hChR2(H134R)",
)
QC_METRIC_NAMES = (
    "Probe drift",
    "Firing rate",
    "Presence ratio",
    "ISI violations",
    "Amplitude cutoff",
    "Motion correction residual",
    "Dropped frames",
    "Pupil tracking",
    "Saturation",
    "Signal to noise",
    "Tile alignment",
    "Registration error",
)
FUNDERS = (
    ("Allen Institute", "AI"),
    ("National Institute of Neurological Disorders and Stroke", "NINDS"),
    ("National Institute of Mental Health", "NIMH"),
    ("Simons Foundation", None),
)
INSTITUTION = {
    "name": "Allen Institute for Neural Dynamics",
    "abbreviation": "AIND",
    "registry": {"name": "Research Organization Registry", "abbreviation": "ROR"},
    "registry_identifier": "04szwah67",
}
SPECIES = {
    "name": "Mus musculus",
    "registry": {"name": "National Center for Biotechnology Information", "abbreviation": "NCBI"},
    "registry_identifier": "NCBI:txid10090",
}
JAX = {
    "name": "Jackson Laboratory",
    "abbreviation": "JAX",
    "registry": {"name": "Research Organization Registry", "abbreviation": "ROR"},
    "registry_identifier": "021sy4w91",
}


def _iso_z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_naive(dt: datetime) -> str:
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds")


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def json_size(obj: Any) -> int:
    """Byte length of ``obj`` as compact JSON (what a DocDB page or a bulk_write chunk carries)."""
    return len(orjson.dumps(obj))


class _Identity(NamedTuple):
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
        self._param_pool: dict[int, list[dict[str, Any]]] = {}
        self._bulk: list[list[float]] | None = None

    # ------------------------------------------------------------------ planning
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
        build = self._v1 if version == "v1" else self._v2
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

    # ------------------------------------------------------------------ shared pieces
    def _location(
        self, name: str, plan: AssetPlan, rng: random.Random, force: bool, derived: bool
    ) -> str:
        if force or plan.in_bucket:
            return f"s3://{self.bucket}/{name}"
        if derived and rng.random() < 0.15:
            return f"s3://{CO_RESULTS_BUCKET}/{_uuid4(rng)}"
        return f"s3://{rng.choice(OTHER_BUCKETS)}/{name}"

    @staticmethod
    def _person(rng: random.Random) -> dict[str, Any]:
        name = rng.choice(PEOPLE)
        return {
            "name": name,
            "abbreviation": "".join(p[0] for p in name.split()),
            "registry": None,
            "registry_identifier": None,
        }

    @staticmethod
    def _funding(rng: random.Random) -> list[dict[str, Any]]:
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

    def _parameters(self, rng: random.Random, n_keys: int) -> dict[str, Any]:
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

    def _pad(
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

    # ------------------------------------------------------------------ identity
    def _identity(
        self,
        plan: AssetPlan,
        rng: random.Random,
        parent: tuple[str, AssetPlan, str] | None,
        short_name_share: float | None,
    ) -> _Identity:
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
        return _Identity(
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

    # ------------------------------------------------------------------ v1
    def _v1(
        self,
        plan: AssetPlan,
        rng: random.Random,
        parent: tuple[str, AssetPlan, str] | None,
        force_bucket: bool,
    ) -> dict[str, Any]:
        ident = self._identity(plan, rng, parent, short_name_share=None)
        abbr, pname, modalities, sid, raw_name, derived = ident[:6]
        proc_type, pipeline, name, created_dt, modified_dt = ident[6:]
        old_style = created_dt.year < 2024 and rng.random() < 0.7
        fmt = _iso_naive if old_style else _iso_z
        has_subject = rng.random() < 0.95
        subject = self._v1_subject(rng, sid) if has_subject else None
        data_description = {
            "describedBy": SCHEMA_URL.format("data_description"),
            "schema_version": "1.0.4",
            "license": "CC-BY-4.0",
            "platform": {"name": pname, "abbreviation": abbr},
            "subject_id": sid,
            "creation_time": _iso_z(created_dt),
            "label": None,
            "name": name,
            "institution": INSTITUTION,
            "funding_source": self._funding(rng),
            "data_level": "derived" if derived else "raw",
            "group": rng.choice(("ephys", "ophys", "behavior", "MSMA")),
            "investigators": [self._person(rng) for _ in range(rng.randint(1, 3))],
            "project_name": rng.choice(PROJECTS),
            "restrictions": None,
            "modality": [{"name": m, "abbreviation": a} for m, a in modalities],
            "related_data": [],
            "data_summary": None,
        }
        procedures = self._v1_procedures(rng, sid, plan) if rng.random() < 0.8 else None
        processing = (
            self._v1_processing(rng, plan, name, raw_name, proc_type, pipeline)
            if derived or rng.random() < 0.7
            else None
        )
        qc = self._v1_qc(rng, modalities, created_dt) if rng.random() < 0.6 else None
        session = (
            self._v1_session(rng, sid, plan, modalities)
            if abbr in ("ecephys", "behavior", "FIP", "single-plane-ophys") and rng.random() < 0.4
            else None
        )
        r = rng.random()
        co_ids = [_uuid4(rng) for _ in range(rng.randint(1, 2))]
        if r < 0.02:
            links: Any = []
        elif r < 0.04:
            links = [{"Code Ocean": co_ids[0]}]
        else:
            links = {"Code Ocean": co_ids}
        status = (
            "Missing"
            if subject is None
            else rng.choice(("Valid", "Valid", "Valid", "Valid", "Invalid", "Unknown"))
        )
        rec: dict[str, Any] = {
            "_id": _uuid4(rng),
            "describedBy": SCHEMA_URL.format("metadata"),
            "schema_version": rng.choice(("1.2.1", "1.2.1", "1.2.1", "1.1.1", "0.2.7")),
            "name": name,
            "location": self._location(name, plan, rng, force_bucket, derived),
            "created": fmt(created_dt),
            "last_modified": fmt(modified_dt),
            "metadata_status": status,
            "external_links": links,
            "subject": subject,
            "data_description": data_description,
            "procedures": procedures,
            "session": session,
            "rig": None,
            "processing": processing,
            "acquisition": None,
            "instrument": None,
            "quality_control": qc,
            "subject_id_": sid,
        }
        self._pad_v1(rec, plan, rng, proc_type, pipeline, name, modalities, created_dt)
        return rec

    @staticmethod
    def _v1_subject(rng: random.Random, sid: str) -> dict[str, Any]:
        dob = datetime(2021, 6, 1) + timedelta(days=rng.randint(0, 1500))
        return {
            "describedBy": SCHEMA_URL.format("subject"),
            "schema_version": "1.0.3",
            "subject_id": sid,
            "sex": rng.choice(("Male", "Female")),
            "date_of_birth": f"{dob:%Y-%m-%d}",
            "genotype": rng.choice(GENOTYPES),
            "species": SPECIES,
            "alleles": [],
            "background_strain": "C57BL/6J",
            "breeding_info": {
                "breeding_group": f"{rng.choice(('Pvalb', 'Sst', 'Vip', 'Dbh'))}-IRES-Cre(ND)",
                "maternal_id": str(rng.randint(500_000, 699_999)),
                "maternal_genotype": rng.choice(GENOTYPES),
                "paternal_id": str(rng.randint(500_000, 699_999)),
                "paternal_genotype": "wt/wt",
            },
            "source": JAX if rng.random() < 0.3 else INSTITUTION,
            "rrid": None,
            "restrictions": None,
            "wellness_reports": [],
            "housing": {
                "cage_id": str(rng.randint(1000, 9999)),
                "room_id": None,
                "light_cycle": {
                    "lights_on_time": "06:00:00",
                    "lights_off_time": "18:00:00",
                    "temperature": "22",
                    "temperature_unit": "Celsius",
                    "humidity": "50",
                    "humidity_unit": "percent",
                },
                "home_cage_enrichment": ["Running wheel", "Shelter"],
                "cohoused_subjects": [],
            },
            "notes": None,
        }

    def _v1_procedures(self, rng: random.Random, sid: str, plan: AssetPlan) -> dict[str, Any]:
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
        return {
            "describedBy": SCHEMA_URL.format("procedures"),
            "schema_version": "1.1.1",
            "subject_id": sid,
            "subject_procedures": surgeries,
            "specimen_procedures": [],
            "notes": None,
        }

    def _v1_process(
        self,
        rng: random.Random,
        proc_type: str,
        pipeline: str,
        start: datetime,
        inp: str,
        out: str,
        n_params: int,
    ) -> dict[str, Any]:
        end = start + timedelta(minutes=rng.randint(5, 600))
        return {
            "name": proc_type,
            "software_version": f"{rng.randint(0, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            "start_date_time": _iso_z(start),
            "end_date_time": _iso_z(end),
            "input_location": inp,
            "output_location": out,
            "code_url": f"https://github.com/AllenNeuralDynamics/{pipeline}",
            "code_version": f"{rng.getrandbits(160):040x}",
            "parameters": self._parameters(rng, n_params),
            "outputs": {},
            "notes": None,
            "resources": None,
        }

    def _v1_processing(
        self,
        rng: random.Random,
        plan: AssetPlan,
        name: str,
        raw_name: str,
        proc_type: str,
        pipeline: str,
    ) -> dict[str, Any]:
        start = plan.acquired + timedelta(hours=1)
        procs = [
            self._v1_process(
                rng, proc_type, pipeline, start, f"/data/{raw_name}", f"/results/{name}", 12
            )
            for _ in range(rng.randint(1, 3))
        ]
        return {
            "describedBy": SCHEMA_URL.format("processing"),
            "schema_version": "1.1.3",
            "processing_pipeline": {
                "data_processes": procs,
                "processor_full_name": rng.choice(PEOPLE),
                "pipeline_version": f"v{rng.randint(1, 5)}.{rng.randint(0, 9)}",
                "pipeline_url": f"https://github.com/AllenNeuralDynamics/{pipeline}",
                "note": None,
            },
            "analyses": [],
            "notes": None,
        }

    def _qc_metric(self, rng: random.Random, when: datetime) -> dict[str, Any]:
        status = rng.choices(("Pass", "Fail", "Pending"), weights=(8, 1, 1))[0]
        return {
            "name": f"{rng.choice(QC_METRIC_NAMES)} {rng.randint(0, 31)}",
            "value": round(rng.uniform(0, 1), 4),
            "description": "Computed automatically by the processing pipeline",
            "reference": f"figures/qc_{rng.randint(0, 999):03d}.png",
            "status_history": [
                {"evaluator": rng.choice(PEOPLE), "status": status, "timestamp": _iso_z(when)}
            ],
        }

    def _v1_evaluation(
        self, rng: random.Random, modalities: Any, when: datetime, n_metrics: int
    ) -> dict[str, Any]:
        m_name, m_abbr = rng.choice(modalities)
        metrics = [self._qc_metric(rng, when) for _ in range(n_metrics)]
        statuses = {m["status_history"][-1]["status"] for m in metrics}
        latest = "Fail" if "Fail" in statuses else "Pending" if "Pending" in statuses else "Pass"
        return {
            "modality": {"name": m_name, "abbreviation": m_abbr},
            "stage": rng.choice(("Raw data", "Processing")),
            "name": f"{m_abbr} quality",
            "description": None,
            "metrics": metrics,
            "tags": [],
            "notes": None,
            "allow_failed_metrics": False,
            "latest_status": latest,
            "created": _iso_z(when),
        }

    def _v1_qc(self, rng: random.Random, modalities: Any, when: datetime) -> dict[str, Any]:
        return {
            "describedBy": SCHEMA_URL.format("quality_control"),
            "schema_version": "1.1.1",
            "evaluations": [
                self._v1_evaluation(rng, modalities, when, rng.randint(1, 4))
                for _ in range(rng.randint(1, 2))
            ],
            "notes": None,
        }

    def _v1_session(
        self, rng: random.Random, sid: str, plan: AssetPlan, modalities: Any
    ) -> dict[str, Any]:
        start = plan.acquired
        end = start + timedelta(minutes=rng.randint(20, 120))
        streams = []
        for _ in range(rng.randint(1, 2)):
            streams.append(
                {
                    "stream_start_time": _iso_z(start),
                    "stream_end_time": _iso_z(end),
                    "daq_names": ["Basestation", "Harp Behavior"],
                    "camera_names": [f"Camera {k}" for k in range(rng.randint(1, 3))],
                    "stream_modalities": [{"name": m, "abbreviation": a} for m, a in modalities],
                    "ephys_modules": [
                        {
                            "assembly_name": f"Probe{chr(65 + k)}",
                            "arc_angle": round(rng.uniform(-30, 30), 1),
                            "module_angle": round(rng.uniform(-30, 30), 1),
                            "angle_unit": "degrees",
                            "primary_targeted_structure": rng.choice(STRUCTURES),
                            "manipulator_coordinates": {
                                "x": round(rng.uniform(-5000, 5000), 1),
                                "y": round(rng.uniform(-5000, 5000), 1),
                                "z": round(rng.uniform(0, 4000), 1),
                                "unit": "micrometer",
                            },
                            "calibration_date": f"{start:%Y-%m-%d}",
                        }
                        for k in range(rng.randint(1, 4))
                    ],
                    "notes": None,
                }
            )
        return {
            "describedBy": SCHEMA_URL.format("session"),
            "schema_version": "1.0.1",
            "protocol_id": [],
            "experimenter_full_name": [rng.choice(PEOPLE)],
            "session_start_time": _iso_z(start),
            "session_end_time": _iso_z(end),
            "session_type": rng.choice(("Receptive field mapping", "Dynamic foraging", "Opto")),
            "iacuc_protocol": "2109",
            "rig_id": f"{rng.randint(300, 399)}_NP{rng.randint(1, 3)}_{start:%Y%m%d}",
            "subject_id": sid,
            "animal_weight_prior": round(rng.uniform(18, 30), 1),
            "animal_weight_post": round(rng.uniform(18, 30), 1),
            "weight_unit": "gram",
            "data_streams": streams,
            "stimulus_epochs": [],
            "mouse_platform_name": "Running wheel",
            "active_mouse_platform": False,
            "reward_consumed_total": None,
            "notes": None,
        }

    def _pad_v1(
        self,
        rec: dict[str, Any],
        plan: AssetPlan,
        rng: random.Random,
        proc_type: str,
        pipeline: str,
        name: str,
        modalities: Any,
        when: datetime,
    ) -> None:
        if rec["processing"] is None:
            rec["processing"] = self._v1_processing(rng, plan, name, name, proc_type, pipeline)
        qc = rec["quality_control"]
        self._pad(
            rec,
            plan,
            rng,
            procs=rec["processing"]["processing_pipeline"]["data_processes"],
            parameters_of=lambda proc: proc["parameters"],
            new_proc=lambda: self._v1_process(
                rng, proc_type, pipeline, plan.acquired, f"/data/{name}", "/results", 24
            ),
            qc_entries=None if qc is None else qc["evaluations"],
            new_qc_entry=lambda: self._v1_evaluation(rng, modalities, when, rng.randint(3, 8)),
        )

    # ------------------------------------------------------------------ v2
    def _v2(
        self,
        plan: AssetPlan,
        rng: random.Random,
        parent: tuple[str, AssetPlan, str] | None,
        force_bucket: bool,
    ) -> dict[str, Any]:
        ident = self._identity(plan, rng, parent, short_name_share=0.3)
        abbr, pname, modalities, sid, raw_name, derived = ident[:6]
        proc_type, pipeline, name, created_dt, modified_dt = ident[6:]
        experimenters = [rng.choice(PEOPLE) for _ in range(rng.randint(1, 2))]
        dob = datetime(2021, 6, 1) + timedelta(days=rng.randint(0, 1500))
        subject: dict[str, Any] = {
            "object_type": "Subject",
            "describedBy": SCHEMA_URL.format("subject"),
            "schema_version": "2.0.6",
            "subject_id": sid,
            "subject_details": {
                "object_type": "Mouse subject",
                "sex": rng.choice(("Male", "Female")),
                "date_of_birth": f"{dob:%Y-%m-%d}",
                "strain": {"name": "C57BL/6J", "registry": "MGI", "registry_identifier": None},
                "species": SPECIES,
                "alleles": [],
                "genotype": rng.choice(GENOTYPES),
                "breeding_info": None,
                "wellness_reports": [],
                "housing": None,
                "source": JAX,
                "restrictions": None,
                "rrid": None,
            },
            "notes": None,
        }
        data_description = {
            "object_type": "Data description",
            "describedBy": SCHEMA_URL.format("data_description"),
            "schema_version": "2.0.9",
            "license": "CC-BY-4.0",
            "subject_id": sid,
            "creation_time": _iso_z(created_dt),
            "tags": [abbr.lower()],
            "name": name,
            "institution": INSTITUTION,
            "funding_source": self._funding(rng),
            "data_level": "derived" if derived else "raw",
            "group": None,
            "investigators": [self._person(rng) for _ in range(rng.randint(1, 3))],
            "project_name": rng.choice(PROJECTS),
            "restrictions": None,
            "modalities": [{"name": m, "abbreviation": a} for m, a in modalities],
            "source_data": [raw_name] if derived else [],
            "data_summary": None,
        }
        acquisition = (
            {
                "object_type": "Acquisition",
                "describedBy": SCHEMA_URL.format("acquisition"),
                "schema_version": "2.0.12",
                "subject_id": sid,
                "acquisition_start_time": _iso_z(plan.acquired),
                "acquisition_end_time": _iso_z(plan.acquired + timedelta(minutes=90)),
                "experimenters": experimenters,
                "ethics_review_id": ["2109"],
                "instrument_id": f"{abbr}_{rng.randint(1, 9)}",
                "acquisition_type": rng.choice(("Dynamic foraging", "Passive viewing", "Imaging")),
                "data_streams": [
                    {
                        "object_type": "Data stream",
                        "stream_start_time": _iso_z(plan.acquired),
                        "stream_end_time": _iso_z(plan.acquired + timedelta(minutes=90)),
                        "modalities": [{"name": m, "abbreviation": a} for m, a in modalities],
                        "active_devices": [f"Device {k}" for k in range(rng.randint(2, 6))],
                        "configurations": [],
                        "notes": None,
                    }
                ],
                "stimulus_epochs": [],
                "subject_details": {
                    "object_type": "Acquisition subject details",
                    "animal_weight_prior": round(rng.uniform(18, 30), 1),
                    "animal_weight_post": round(rng.uniform(18, 30), 1),
                    "weight_unit": "gram",
                    "mouse_platform_name": "Running wheel",
                },
                "notes": None,
            }
            if rng.random() < 0.6
            else None
        )
        processing = self._v2_processing(rng, plan, name, raw_name, proc_type, pipeline, 1)
        qc = self._v2_qc(rng, modalities, created_dt, experimenters) if rng.random() < 0.6 else None
        co = [_uuid4(rng)]
        other_ids: dict[str, Any] = {"Code Ocean": co}
        if rng.random() < 0.05:
            other_ids["DANDI"] = [f"DANDI:{rng.randint(100000, 999999)}"]
        rec: dict[str, Any] = {
            "_id": _uuid4(rng),
            "object_type": "Metadata",
            "describedBy": SCHEMA_URL.format("metadata"),
            "schema_version": "2.0.78",
            "name": name,
            "location": self._location(name, plan, rng, force_bucket, derived),
            "other_identifiers": other_ids,
            "subject": subject,
            "data_description": data_description,
            "procedures": (
                {
                    "object_type": "Procedures",
                    "describedBy": SCHEMA_URL.format("procedures"),
                    "schema_version": "2.0.20",
                    "subject_id": sid,
                    "subject_procedures": self._v1_procedures(rng, sid, plan)["subject_procedures"],
                    "specimen_procedures": [],
                    "coordinate_system": {
                        "object_type": "Coordinate system",
                        "name": "BREGMA_ARI",
                        "origin": "Bregma",
                        "axis_unit": "millimeter",
                        "axes": [
                            {
                                "object_type": "Axis",
                                "name": "AP",
                                "direction": "Posterior_to_anterior",
                            },
                            {"object_type": "Axis", "name": "ML", "direction": "Left_to_right"},
                            {
                                "object_type": "Axis",
                                "name": "SI",
                                "direction": "Superior_to_inferior",
                            },
                        ],
                    },
                    "notes": None,
                }
                if rng.random() < 0.8
                else None
            ),
            "instrument": None,
            "processing": processing,
            "acquisition": acquisition,
            "quality_control": qc,
            "model": None,
            "_last_modified": _iso_z(modified_dt),
            "subject_id_": sid,
        }
        self._pad_v2(
            rec, plan, rng, proc_type, pipeline, name, modalities, created_dt, experimenters
        )
        return rec

    def _v2_process(
        self,
        rng: random.Random,
        proc_type: str,
        pipeline: str,
        start: datetime,
        out: str,
        n_params: int,
    ) -> dict[str, Any]:
        return {
            "object_type": "Data process",
            "process_type": proc_type,
            "name": proc_type,
            "stage": "Processing",
            "code": {
                "object_type": "Code",
                "url": f"https://github.com/AllenNeuralDynamics/{pipeline}",
                "name": pipeline,
                "version": f"{rng.randint(0, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
                "container": None,
                "run_script": "code/run",
                "language": "Python",
                "language_version": "3.11",
                "input_data": None,
                "parameters": self._parameters(rng, n_params),
                "core_dependency": None,
            },
            "experimenters": [rng.choice(PEOPLE)],
            "pipeline_name": pipeline,
            "start_date_time": _iso_z(start),
            "end_date_time": _iso_z(start + timedelta(minutes=rng.randint(5, 600))),
            "output_path": out,
            "output_parameters": {},
            "notes": None,
            "resources": None,
        }

    def _v2_processing(
        self,
        rng: random.Random,
        plan: AssetPlan,
        name: str,
        raw_name: str,
        proc_type: str,
        pipeline: str,
        n: int,
    ) -> dict[str, Any]:
        start = plan.acquired + timedelta(hours=1)
        procs = [
            self._v2_process(rng, proc_type, pipeline, start, f"/results/{name}", 12)
            for _ in range(n)
        ]
        return {
            "object_type": "Processing",
            "describedBy": SCHEMA_URL.format("processing"),
            "schema_version": "2.0.11",
            "data_processes": procs,
            "pipelines": [
                {
                    "object_type": "Code",
                    "url": f"https://github.com/AllenNeuralDynamics/{pipeline}",
                    "name": pipeline,
                    "version": f"v{rng.randint(1, 5)}.{rng.randint(0, 9)}",
                }
            ],
            "dependency_graph": {proc_type: []},
            "notes": None,
        }

    def _v2_metric(
        self, rng: random.Random, modalities: Any, when: datetime, experimenters: list[str]
    ) -> dict[str, Any]:
        m_name, m_abbr = rng.choice(modalities)
        metric = self._qc_metric(rng, when)
        metric["status_history"][0]["evaluator"] = rng.choice(experimenters)
        return {
            "object_type": "QC metric",
            "modality": {"name": m_name, "abbreviation": m_abbr},
            "stage": rng.choice(("Raw data", "Processing")),
            "tags": {"probe": f"probe{chr(65 + rng.randint(0, 3))}"},
            **metric,
        }

    def _v2_qc(
        self, rng: random.Random, modalities: Any, when: datetime, experimenters: list[str]
    ) -> dict[str, Any]:
        metrics = [
            self._v2_metric(rng, modalities, when, experimenters) for _ in range(rng.randint(2, 8))
        ]
        return {
            "object_type": "Quality control",
            "describedBy": SCHEMA_URL.format("quality_control"),
            "schema_version": "2.0.7",
            "metrics": metrics,
            "key_experimenters": experimenters,
            "notes": None,
            "default_grouping": ["probe"],
            "allow_tag_failures": [],
            "status": {},
        }

    def _pad_v2(
        self,
        rec: dict[str, Any],
        plan: AssetPlan,
        rng: random.Random,
        proc_type: str,
        pipeline: str,
        name: str,
        modalities: Any,
        when: datetime,
        experimenters: list[str],
    ) -> None:
        qc = rec["quality_control"]
        self._pad(
            rec,
            plan,
            rng,
            procs=rec["processing"]["data_processes"],
            parameters_of=lambda proc: proc["code"]["parameters"],
            new_proc=lambda: self._v2_process(
                rng, proc_type, pipeline, plan.acquired, "/results", 24
            ),
            qc_entries=None if qc is None else qc["metrics"],
            new_qc_entry=lambda: self._v2_metric(rng, modalities, when, experimenters),
        )
        if rec["quality_control"] is not None:
            statuses: dict[str, str] = {}
            for m in rec["quality_control"]["metrics"]:
                statuses[m["tags"]["probe"]] = m["status_history"][-1]["status"]
            rec["quality_control"]["status"] = statuses


def core_files(record: dict[str, Any], version: str) -> dict[str, Any]:
    """The core metadata blocks of ``record`` that are present, keyed by S3 file stem."""
    names = CORE_FILES["v1" if version == "v1" else "v2"]
    return {k: record[k] for k in names if record.get(k) is not None}
