"""The vocabulary of the generated AIND records: schema URLs, buckets, platforms, people.

The fixed value pools that the record builders draw from (platforms and their modalities,
processing pipelines, genotypes, projects, people, brain structures, QC metric names,
funders) and the organisation blocks every record embeds, plus the timestamp and UUID
formats real records use. They live apart from the builders because both schema versions
(:mod:`.records_v1`, :mod:`.records_v2`) and the shared parts (:mod:`.record_parts`) draw from
them; only data and pure formatting live here, no random state.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime

import numpy as np

SCHEMA_URL = "https://raw.githubusercontent.com/AllenNeuralDynamics/aind-data-schema/main/src/aind_data_schema/core/{}.py"
CO_RESULTS_BUCKET = "codeocean-s3datasetsbucket-1u41qdg42ur9"
OTHER_BUCKETS = ("aind-ephys-data", "aind-ophys-data", "aind-private-data-prod-o5171v")
MIN_BYTES = 5_000

# Modalities that several platforms record, as (name, abbreviation).
SPIM = ("Selective plane illumination microscopy", "SPIM")
POPHYS = ("Planar optical physiology", "pophys")
BEHAVIOR_VIDEOS = ("Behavior videos", "behavior-videos")

# (platform abbreviation, platform name, modalities)
PLATFORMS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "ecephys",
        "Electrophysiology platform",
        (("Extracellular electrophysiology", "ecephys"), BEHAVIOR_VIDEOS),
    ),
    ("SmartSPIM", "SmartSPIM platform", (SPIM,)),
    ("exaSPIM", "ExaSPIM platform", (SPIM,)),
    ("single-plane-ophys", "Single-plane optical physiology", (POPHYS,)),
    ("multiplane-ophys", "Multiplane optical physiology", (POPHYS,)),
    ("behavior", "Behavior platform", (("Behavior", "behavior"), BEHAVIOR_VIDEOS)),
    (
        "FIP",
        "Frame-projected independent-fiber photometry platform",
        (("Fiber photometry", "fib"),),
    ),
    ("HCR", "Hybridization chain reaction platform", (SPIM,)),
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


def iso_z(dt: datetime) -> str:
    """``dt`` as an ISO timestamp with microseconds and a ``Z`` suffix (how records store times).

    Args:
        dt: A UTC time.

    Returns:
        For example ``"2024-05-01T12:00:00.000000Z"``.
    """
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_naive(dt: datetime) -> str:
    """``dt`` as a naive ISO timestamp with microseconds (the style of older v1 records).

    Args:
        dt: A time; its time zone is dropped.

    Returns:
        For example ``"2023-05-01T12:00:00.000000"``.
    """
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds")


def random_uuid4(rng: random.Random) -> str:
    """A UUID4 string drawn from ``rng`` (128 bits), so a seed always gives the same ids.

    Args:
        rng: The record's random stream.

    Returns:
        The UUID in its canonical string form.
    """
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
