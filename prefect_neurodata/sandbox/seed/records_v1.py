"""Builder of aind-data-schema 1.x records (the DocDB ``v1`` collection).

:class:`V1RecordBuilder` turns one :class:`~.record_parts.AssetPlan` into a 1.x ``Metadata``
document: subject, data description, procedures, processing, quality control evaluations and
sometimes a session, with the older naive timestamps and legacy ``external_links`` shapes of
early records. It is one of the two halves that :class:`~.records.RecordGenerator` combines;
what both versions share comes from :class:`~.record_parts.RecordParts`.
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
    STRUCTURES,
    iso_naive,
    iso_z,
    random_uuid4,
)


class V1RecordBuilder(RecordBuilder):
    """Builds ``v1`` records; the random draws happen in the same order as ever."""

    def assemble(
        self, plan: AssetPlan, rng: random.Random, identity: AssetIdentity, force_bucket: bool
    ) -> dict[str, Any]:
        """Assemble the document (see :meth:`RecordBuilder.build`)."""
        abbr, pname, modalities, sid, raw_name, derived = identity[:6]
        proc_type, pipeline, name, created_dt, modified_dt = identity[6:]
        old_style = created_dt.year < 2024 and rng.random() < 0.7
        fmt = iso_naive if old_style else iso_z
        has_subject = rng.random() < 0.95
        subject = self._v1_subject(rng, sid) if has_subject else None
        data_description = {
            "describedBy": SCHEMA_URL.format("data_description"),
            "schema_version": "1.0.4",
            "license": "CC-BY-4.0",
            "platform": {"name": pname, "abbreviation": abbr},
            "subject_id": sid,
            "creation_time": iso_z(created_dt),
            "label": None,
            "name": name,
            "institution": INSTITUTION,
            "funding_source": self._parts.funding(rng),
            "data_level": "derived" if derived else "raw",
            "group": rng.choice(("ephys", "ophys", "behavior", "MSMA")),
            "investigators": [self._parts.person(rng) for _ in range(rng.randint(1, 3))],
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
        co_ids = [random_uuid4(rng) for _ in range(rng.randint(1, 2))]
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
            "_id": random_uuid4(rng),
            "describedBy": SCHEMA_URL.format("metadata"),
            "schema_version": rng.choice(("1.2.1", "1.2.1", "1.2.1", "1.1.1", "0.2.7")),
            "name": name,
            "location": self._parts.location(name, plan, rng, force_bucket, derived),
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
        return {
            "describedBy": SCHEMA_URL.format("procedures"),
            "schema_version": "1.1.1",
            "subject_id": sid,
            "subject_procedures": self._parts.surgeries(rng, plan),
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
            "start_date_time": iso_z(start),
            "end_date_time": iso_z(end),
            "input_location": inp,
            "output_location": out,
            "code_url": f"https://github.com/AllenNeuralDynamics/{pipeline}",
            "code_version": f"{rng.getrandbits(160):040x}",
            "parameters": self._parts.parameters(rng, n_params),
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

    def _v1_evaluation(
        self, rng: random.Random, modalities: Any, when: datetime, n_metrics: int
    ) -> dict[str, Any]:
        m_name, m_abbr = rng.choice(modalities)
        metrics = [self._parts.qc_metric(rng, when) for _ in range(n_metrics)]
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
            "created": iso_z(when),
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
                    "stream_start_time": iso_z(start),
                    "stream_end_time": iso_z(end),
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
            "session_start_time": iso_z(start),
            "session_end_time": iso_z(end),
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
        self._parts.pad(
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
