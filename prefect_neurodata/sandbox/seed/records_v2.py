"""Builder of aind-data-schema 2.x records (the DocDB ``v2`` collection).

:class:`V2RecordBuilder` turns one :class:`~.record_parts.AssetPlan` into a 2.x ``Metadata``
document: typed subject, data description, acquisition, procedures with a coordinate system,
processing with code blocks, and quality control metrics whose per-probe status is summed up.
It is one of the two halves that :class:`~.records.RecordGenerator` combines; what both
versions share comes from :class:`~.record_parts.RecordParts`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from prefect_neurodata.sandbox.seed.record_parts import AssetIdentity, AssetPlan, RecordBuilder
from prefect_neurodata.sandbox.seed.record_vocabulary import (
    GENOTYPES,
    INSTITUTION,
    JAX,
    PEOPLE,
    PROJECTS,
    SCHEMA_URL,
    SPECIES,
    iso_z,
    random_uuid4,
)


class V2RecordBuilder(RecordBuilder):
    """Builds ``v2`` records; the random draws happen in the same order as ever."""

    short_name_share = 0.3

    def assemble(
        self, plan: AssetPlan, rng: random.Random, identity: AssetIdentity, force_bucket: bool
    ) -> dict[str, Any]:
        """Assemble the document (see :meth:`RecordBuilder.build`)."""
        abbr, pname, modalities, sid, raw_name, derived = identity[:6]
        proc_type, pipeline, name, created_dt, modified_dt = identity[6:]
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
            "creation_time": iso_z(created_dt),
            "tags": [abbr.lower()],
            "name": name,
            "institution": INSTITUTION,
            "funding_source": self._parts.funding(rng),
            "data_level": "derived" if derived else "raw",
            "group": None,
            "investigators": [self._parts.person(rng) for _ in range(rng.randint(1, 3))],
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
                "acquisition_start_time": iso_z(plan.acquired),
                "acquisition_end_time": iso_z(plan.acquired + timedelta(minutes=90)),
                "experimenters": experimenters,
                "ethics_review_id": ["2109"],
                "instrument_id": f"{abbr}_{rng.randint(1, 9)}",
                "acquisition_type": rng.choice(("Dynamic foraging", "Passive viewing", "Imaging")),
                "data_streams": [
                    {
                        "object_type": "Data stream",
                        "stream_start_time": iso_z(plan.acquired),
                        "stream_end_time": iso_z(plan.acquired + timedelta(minutes=90)),
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
        co = [random_uuid4(rng)]
        other_ids: dict[str, Any] = {"Code Ocean": co}
        if rng.random() < 0.05:
            other_ids["DANDI"] = [f"DANDI:{rng.randint(100000, 999999)}"]
        rec: dict[str, Any] = {
            "_id": random_uuid4(rng),
            "object_type": "Metadata",
            "describedBy": SCHEMA_URL.format("metadata"),
            "schema_version": "2.0.78",
            "name": name,
            "location": self._parts.location(name, plan, rng, force_bucket, derived),
            "other_identifiers": other_ids,
            "subject": subject,
            "data_description": data_description,
            "procedures": (
                {
                    "object_type": "Procedures",
                    "describedBy": SCHEMA_URL.format("procedures"),
                    "schema_version": "2.0.20",
                    "subject_id": sid,
                    "subject_procedures": self._parts.surgeries(rng, plan),
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
            "_last_modified": iso_z(modified_dt),
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
                "parameters": self._parts.parameters(rng, n_params),
                "core_dependency": None,
            },
            "experimenters": [rng.choice(PEOPLE)],
            "pipeline_name": pipeline,
            "start_date_time": iso_z(start),
            "end_date_time": iso_z(start + timedelta(minutes=rng.randint(5, 600))),
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
        metric = self._parts.qc_metric(rng, when)
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
        self._parts.pad(
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
