"""The FHIR R4 side of a simulated patient: one transaction ``Bundle`` per patient.

`build_bundle` writes what a hospital's FHIR server would hold about the
patient of a ``PatientScenario``: the ``Organization``, ``Patient``,
``Encounter`` s, vital-sign and laboratory ``Observation`` s that follow the
conditions over time (`fusion.cohort.labs`), ``Condition`` s coded in SNOMED CT
and ICD-10-CM, ``MedicationRequest`` s (RxNorm), ``Procedure`` s, and for each
study the imaging ``ServiceRequest``, ``Device``, ``ImagingStudy`` and the
radiology ``DiagnosticReport``. Every entry is a ``PUT`` to ``Type/id`` so the
ids the scenario chose are kept and the relative references resolve.

The record is a snapshot taken some time after the last report (a retrospective
pull): conditions that had abated by then are ``resolved``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from fusion.cohort import terminology as t
from fusion.cohort.labs import BMP, CBC, CONDITION_PANELS, VITALS, LabModel, Measurement
from fusion.cohort.reporting import conclusion_text, filed_image_findings
from fusion.cohort.scenario import (
    ClinicalCondition,
    ConditionEpisode,
    ImageFinding,
    PatientScenario,
    SimSite,
    StudyKind,
    StudyPlan,
)

__all__ = ["build_bundle", "device_id"]

logger = logging.getLogger(__name__)

Resource = dict[str, Any]
C = ClinicalCondition

_NS = uuid.UUID("6f1c7a52-3c55-4d2e-9a61-2b8f3f0c9e11")
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_INTERPRETATION_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_ENC_CLASS = {"AMB": "ambulatory", "IMP": "inpatient encounter", "EMER": "emergency"}
_EMERGENCY = frozenset({C.PNEUMOTHORAX, C.RIB_FRACTURE, C.STROKE})
_INPATIENT = frozenset({C.PNEUMONIA, C.HEART_FAILURE, C.LUNG_CANCER, C.BRAIN_TUMOUR, C.PLEURAL_EFFUSION})
_NO_REASON_TEXT = ("Pre-operative assessment", "Routine screening", "Follow-up imaging", "Health check")


def _ref(kind: str, rid: str) -> dict[str, str]:
    return {"reference": f"{kind}/{rid}"}


def _iso(when: datetime) -> str:
    return when.replace(microsecond=0).isoformat()


def device_id(serial_number: str) -> str:
    """The FHIR ``Device`` id of a site device (from its serial number)."""
    return "dev-" + "".join(ch for ch in serial_number.lower() if ch.isalnum())


def _quantity(value: float, unit: str, decimals: int) -> dict[str, Any]:
    number: float | int = round(value) if decimals == 0 else value
    return {"value": number, "unit": unit, "system": t.UCUM, "code": unit}


class _Builder:
    """Accumulates the resources of one patient's bundle."""

    def __init__(self, scenario: PatientScenario, site: SimSite, rng: np.random.Generator) -> None:
        self.s = scenario
        self.site = site
        self.rng = rng
        self.num = scenario.patient_id.removeprefix("pat-")
        self.labs = LabModel(scenario, rng)
        self.resources: list[Resource] = []
        self._counters: dict[str, int] = {}
        last_report = max(p.report_datetime for p in scenario.studies) if scenario.studies else None
        base = last_report or datetime.combine(scenario.birth_date, datetime.min.time())
        self.snapshot = base + timedelta(days=float(rng.uniform(1.0, 60.0)))
        if scenario.deceased is not None and scenario.deceased > self.snapshot:
            self.snapshot = scenario.deceased + timedelta(days=1)
        self.condition_ids: dict[ClinicalCondition, str] = {}

    def next_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}-{self.num}-{n}"

    def add(self, resource: Resource) -> Resource:
        self.resources.append(resource)
        return resource

    @property
    def patient_ref(self) -> dict[str, str]:
        return _ref("Patient", self.s.patient_id)

    # -- identity -----------------------------------------------------------------------

    def organization(self) -> None:
        self.add(
            {
                "resourceType": "Organization",
                "id": self.site.organization_id,
                "identifier": [
                    {"system": f"urn:oid:{self.site.uid_root}.100.0", "value": self.site.organization_id}
                ],
                "active": True,
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                "code": "prov",
                                "display": "Healthcare Provider",
                            }
                        ]
                    }
                ],
                "name": self.site.name,
            }
        )

    def patient(self) -> None:
        s = self.s
        resource: Resource = {
            "resourceType": "Patient",
            "id": s.patient_id,
            "identifier": [
                {
                    "use": "usual",
                    "type": {
                        "coding": [{"system": t.V2_0203, "code": "MR", "display": "Medical record number"}]
                    },
                    "system": self.site.mrn_system,
                    "value": s.mrn,
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": s.family, "given": list(s.given)}],
            "gender": s.gender,
            "birthDate": s.birth_date.isoformat(),
            "managingOrganization": _ref("Organization", self.site.organization_id),
        }
        if s.deceased is not None:
            resource["deceasedDateTime"] = _iso(s.deceased)
        self.add(resource)

    # -- encounters and observations -----------------------------------------------------

    def encounter(self, cls: str, start: datetime, end: datetime, reason: str | None = None) -> str:
        eid = self.next_id("enc")
        resource: Resource = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished" if end <= self.snapshot else "in-progress",
            "class": {"system": t.V3_ACT_CODE, "code": cls, "display": _ENC_CLASS[cls]},
            "subject": self.patient_ref,
            "period": {"start": _iso(start)} | ({"end": _iso(end)} if end <= self.snapshot else {}),
            "serviceProvider": _ref("Organization", self.site.organization_id),
        }
        if reason is not None:
            resource["reasonReference"] = [_ref("Condition", reason)]
        self.add(resource)
        return eid

    def observation(self, m: Measurement, encounter: str, issued: datetime) -> None:
        a = m.analyte
        codings = [{"system": t.LOINC, "code": a.loinc, "display": a.display}]
        if a.key == "spo2":  # the FHIR vital-signs profile's code for SpO2, next to the pulse-oximetry one
            codings.append(
                {"system": t.LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"}
            )
        display = "Vital Signs" if a.category == "vital-signs" else "Laboratory"
        resource: Resource = {
            "resourceType": "Observation",
            "id": self.next_id("obs"),
            "status": "final",
            "category": [{"coding": [{"system": _OBS_CATEGORY, "code": a.category, "display": display}]}],
            "code": {"coding": codings, "text": a.display},
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", encounter),
            "effectiveDateTime": _iso(m.when),
            "issued": _iso(issued),
            "valueQuantity": _quantity(m.value, a.unit, a.decimals),
            "interpretation": [
                {
                    "coding": [
                        {
                            "system": _INTERPRETATION,
                            "code": m.interpretation,
                            "display": _INTERPRETATION_DISPLAY[m.interpretation],
                        }
                    ]
                }
            ],
        }
        rng: dict[str, Any] = {}
        if m.low is not None:
            rng["low"] = _quantity(m.low, a.unit, 2)
        if m.high is not None:
            rng["high"] = _quantity(m.high, a.unit, 2)
        if rng:
            resource["referenceRange"] = [rng]
        self.add(resource)

    def body_measures(self, when: datetime, encounter: str, height: bool) -> None:
        weight = self.labs.weight_at(when)
        items = [("29463-7", "Body weight", weight, "kg")]
        if height:
            items.append(("8302-2", "Body height", self.s.height_cm, "cm"))
        items.append(
            (
                "39156-5",
                "Body mass index (BMI) [Ratio]",
                round(weight / (self.s.height_cm / 100) ** 2, 1),
                "kg/m2",
            )
        )
        for code, display, value, unit in items:
            self.add(
                {
                    "resourceType": "Observation",
                    "id": self.next_id("obs"),
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {"system": _OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}
                            ]
                        }
                    ],
                    "code": {
                        "coding": [{"system": t.LOINC, "code": code, "display": display}],
                        "text": display,
                    },
                    "subject": self.patient_ref,
                    "encounter": _ref("Encounter", encounter),
                    "effectiveDateTime": _iso(when),
                    "issued": _iso(when + timedelta(minutes=5)),
                    "valueQuantity": _quantity(value, unit, 1),
                }
            )

    def panel(self, keys: Sequence[str], when: datetime, encounter: str) -> None:
        issued_lab = when + timedelta(minutes=float(self.rng.uniform(40.0, 180.0)))
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            m = self.labs.measure(key, when)
            issued = when + timedelta(minutes=3) if m.analyte.category == "vital-signs" else issued_lab
            self.observation(m, encounter, issued)

    # -- conditions, medications, procedures --------------------------------------------

    def condition(self, episode: ConditionEpisode, encounter: str | None, first_order: datetime) -> None:
        cid = self.next_id("cond")
        self.condition_ids[episode.condition] = cid
        snomed, icd = t.CONDITION_CODES[episode.condition]
        if episode.condition is C.RIB_FRACTURE and episode.side in t.RIB_FRACTURE_ICD_BY_SIDE:
            icd = t.RIB_FRACTURE_ICD_BY_SIDE[episode.side]
        resolved = episode.abatement is not None and episode.abatement <= self.snapshot
        recorded = min(episode.onset + timedelta(hours=float(self.rng.uniform(2.0, 48.0))), first_order)
        chronic = episode.condition in {C.HEART_FAILURE, C.LUNG_CANCER, C.LUNG_NODULE, C.BRAIN_TUMOUR}
        resource: Resource = {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": {
                "coding": [{"system": _CLINICAL, "code": "resolved" if resolved else "active"}]
            },
            "verificationStatus": {"coding": [{"system": _VERIFICATION, "code": "confirmed"}]},
            "category": [
                {
                    "coding": [
                        {
                            "system": _COND_CATEGORY,
                            "code": "problem-list-item" if chronic else "encounter-diagnosis",
                        }
                    ]
                }
            ],
            "severity": {"coding": [_severity(episode.severity)]},
            "code": {
                "coding": [t.coding(t.SNOMED, snomed), t.coding(t.ICD10CM, icd)],
                "text": snomed.display,
            },
            "subject": self.patient_ref,
            "onsetDateTime": _iso(episode.onset),
            "recordedDate": _iso(max(recorded, episode.onset)),
        }
        body = _body_sites(episode.condition.region, episode.condition, episode.side)
        if body:
            resource["bodySite"] = body
        if encounter is not None:
            resource["encounter"] = _ref("Encounter", encounter)
        if resolved and episode.abatement is not None:
            resource["abatementDateTime"] = _iso(episode.abatement)
        self.add(resource)

    def medications(self, episode: ConditionEpisode, anchor: datetime, encounter: str | None) -> None:
        for plan in t.MEDICATIONS[episode.condition]:
            if self.rng.random() >= plan.probability:
                continue
            start = max(anchor + timedelta(days=plan.start_days), episode.onset + timedelta(hours=1))
            if start > self.snapshot or (self.s.deceased is not None and start > self.s.deceased):
                continue
            end = start + timedelta(days=plan.days) if plan.days is not None else None
            done = end is not None and end <= self.snapshot
            stopped = self.s.deceased is not None and self.s.deceased <= self.snapshot
            resource: Resource = {
                "resourceType": "MedicationRequest",
                "id": self.next_id("medrx"),
                "status": "completed" if done else ("stopped" if stopped else "active"),
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [t.coding(t.RXNORM, plan.code)],
                    "text": plan.code.display,
                },
                "subject": self.patient_ref,
                "authoredOn": _iso(start),
                "reasonReference": [_ref("Condition", self.condition_ids[episode.condition])],
                "dosageInstruction": [{"text": plan.dosage}],
            }
            if encounter is not None and abs((start - anchor).total_seconds()) < 3 * 86400:
                resource["encounter"] = _ref("Encounter", encounter)
            if end is not None:
                resource["dispenseRequest"] = {"validityPeriod": {"start": _iso(start), "end": _iso(end)}}
            self.add(resource)

    def procedures(self, episode: ConditionEpisode, anchor: datetime, encounter: str | None) -> None:
        for plan in t.PROCEDURES.get(episode.condition, ()):
            when = anchor + timedelta(days=plan.after_days)
            if episode.severity < plan.min_severity or when > self.snapshot:
                continue
            if self.s.deceased is not None and when > self.s.deceased:
                continue
            resource: Resource = {
                "resourceType": "Procedure",
                "id": self.next_id("proc"),
                "status": "completed",
                "code": {"coding": [t.coding(t.SNOMED, plan.code)], "text": plan.code.display},
                "subject": self.patient_ref,
                "performedDateTime": _iso(when),
                "reasonReference": [_ref("Condition", self.condition_ids[episode.condition])],
            }
            body = _body_sites(episode.condition.region, episode.condition, episode.side)
            if body:
                resource["bodySite"] = body
            if encounter is not None:
                resource["encounter"] = _ref("Encounter", encounter)
            self.add(resource)

    # -- imaging ------------------------------------------------------------------------

    def device(self, plan: StudyPlan, seen: set[str]) -> str:
        d = plan.device
        did = device_id(d.serial_number)
        if did in seen:
            return did
        seen.add(did)
        names = [{"name": d.model, "type": "model-name"}]
        if d.station_name:
            names.append({"name": d.station_name, "type": "user-friendly-name"})
        resource: Resource = {
            "resourceType": "Device",
            "id": did,
            "identifier": [{"system": f"urn:oid:{self.site.uid_root}.100.3", "value": d.serial_number}],
            "status": "active",
            "manufacturer": d.manufacturer,
            "serialNumber": d.serial_number,
            "modelNumber": d.model,
            "deviceName": names,
            "type": {"coding": [t.coding(t.DCM, t.MODALITY_CODES[d.modality])]},
            "owner": _ref("Organization", self.site.organization_id),
        }
        if d.software_versions:
            resource["version"] = [{"value": v} for v in d.software_versions]
        self.add(resource)
        return did

    def imaging(self, plan: StudyPlan, encounter: str, device: str, findings: Sequence[ImageFinding]) -> None:
        code = t.imaging_code(plan.kind, plan.views)
        region = "head" if plan.kind is StudyKind.BRAIN_MR else "chest"
        reason_side = next((e.side for e in self.s.conditions if e.condition is plan.reason), None)
        accession = {
            "type": {"coding": [{"system": t.V2_0203, "code": "ACSN", "display": "Accession ID"}]},
            "system": self.site.accession_system,
            "value": plan.accession_number,
        }
        order: Resource = {
            "resourceType": "ServiceRequest",
            "id": plan.order_id,
            "identifier": [accession],
            "status": "completed",
            "intent": "order",
            "category": [{"coding": [t.coding(t.SNOMED, t.IMAGING_CATEGORY)]}],
            "code": {"coding": [t.coding(t.LOINC, code)], "text": code.display},
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", encounter),
            "occurrenceDateTime": _iso(plan.study_datetime),
            "authoredOn": _iso(plan.order_datetime),
            "performer": [_ref("Organization", self.site.organization_id)],
            "bodySite": _body_sites(region, plan.reason, reason_side),
        }
        if plan.reason is not None and plan.reason in self.condition_ids:
            order["reasonCode"] = [{"coding": [t.coding(t.SNOMED, t.CONDITION_CODES[plan.reason][0])]}]
            order["reasonReference"] = [_ref("Condition", self.condition_ids[plan.reason])]
        else:
            order["reasonCode"] = [{"text": _NO_REASON_TEXT[int(self.rng.integers(len(_NO_REASON_TEXT)))]}]
        self.add(order)

        modality = t.coding(t.DCM, t.MODALITY_CODES[plan.kind.modality])
        body = t.coding(t.SNOMED, t.REGION_SITES[region])
        if plan.kind is StudyKind.CHEST_DX:
            series_desc = [f"Chest {v}" for v in plan.views] or ["Chest"]
            per_series = [1] * len(plan.series_instance_uids)
        else:
            series_desc = ["Axial CT chest" if plan.kind is StudyKind.CHEST_CT else "Axial T2 brain"]
            per_series = [plan.slices] * len(plan.series_instance_uids)
        series = []
        for i, uid in enumerate(plan.series_instance_uids):
            series.append(
                {
                    "uid": uid,
                    "number": i + 1,
                    "modality": modality,
                    "description": series_desc[min(i, len(series_desc) - 1)],
                    "numberOfInstances": per_series[i],
                    "bodySite": body,
                    "started": _iso(plan.study_datetime + timedelta(minutes=2 * i)),
                    "performer": [{"actor": _ref("Device", device)}],
                }
            )
        study: Resource = {
            "resourceType": "ImagingStudy",
            "id": plan.imaging_study_id,
            "identifier": [
                {"use": "official", "system": "urn:dicom:uid", "value": f"urn:oid:{plan.study_instance_uid}"},
                accession,
            ],
            "status": "available",
            "modality": [modality],
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", encounter),
            "started": _iso(plan.study_datetime),
            "basedOn": [_ref("ServiceRequest", plan.order_id)],
            "numberOfSeries": len(series),
            "numberOfInstances": sum(per_series),
            "procedureCode": [{"coding": [t.coding(t.LOINC, code)], "text": code.display}],
            "description": code.display,
            "series": series,
        }
        if "reasonReference" in order:
            study["reasonReference"] = order["reasonReference"]
        self.add(study)

        conclusion_codes = [
            {"coding": [t.coding(t.SNOMED, t.FINDING_CODES[f.condition])]} for f in findings
        ] or [{"coding": [t.coding(t.SNOMED, t.NORMAL_FINDING)]}]
        self.add(
            {
                "resourceType": "DiagnosticReport",
                "id": plan.report_id,
                "basedOn": [_ref("ServiceRequest", plan.order_id)],
                "status": "final",
                "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
                "code": {
                    "coding": [t.coding(t.LOINC, t.DIAGNOSTIC_IMAGING_REPORT), t.coding(t.LOINC, code)],
                    "text": f"{code.display} report",
                },
                "subject": self.patient_ref,
                "encounter": _ref("Encounter", encounter),
                "effectiveDateTime": _iso(plan.report_datetime),
                "issued": _iso(plan.report_datetime),
                "performer": [_ref("Organization", self.site.organization_id)],
                "imagingStudy": [_ref("ImagingStudy", plan.imaging_study_id)],
                "conclusion": conclusion_text(plan.kind, findings),
                "conclusionCode": conclusion_codes,
            }
        )


def _severity(value: float) -> dict[str, str]:
    if value < 0.35:
        return {"system": t.SNOMED, "code": "255604002", "display": "Mild"}
    if value < 0.65:
        return {"system": t.SNOMED, "code": "6736007", "display": "Moderate"}
    return {"system": t.SNOMED, "code": "24484000", "display": "Severe"}


def _body_sites(region: str, condition: ClinicalCondition | None, side: str | None) -> list[dict[str, Any]]:
    """bodySite: the structure, with a laterality qualifier where the side matters."""
    if condition is C.HEART_FAILURE:
        return [{"coding": [t.coding(t.SNOMED, t.REGION_SITES["chest"])]}]
    if region == "chest" and condition is not None and condition is not C.RIB_FRACTURE and side:
        return [{"coding": [t.coding(t.SNOMED, t.REGION_SITES[f"{side}-lung"])]}]
    sites: list[dict[str, Any]] = [
        {"coding": [t.coding(t.SNOMED, t.REGION_SITES["rib" if condition is C.RIB_FRACTURE else region])]}
    ]
    if side is not None and side in t.LATERALITY and condition is not None:
        sites.append({"coding": [t.coding(t.SNOMED, t.LATERALITY[side])], "text": side})
    return sites


def _encounter_class(plan: StudyPlan, scenario: PatientScenario) -> str:
    if plan.reason in _EMERGENCY:
        return "EMER"
    if plan.reason in _INPATIENT:
        sev = max((e.severity for e in scenario.conditions if e.condition is plan.reason), default=0.0)
        return "IMP" if sev >= 0.4 else "AMB"
    return "AMB"


def build_bundle(
    scenario: PatientScenario,
    site: SimSite,
    seed: int,
    *,
    donor_findings: Mapping[str, Sequence[ImageFinding]] | None = None,
) -> dict[str, Any]:
    """The patient's FHIR R4 transaction Bundle (a JSON-ready dict).

    ``seed`` draws the labs, vital signs and the record's incidental choices,
    so the same scenario and seed give the same Bundle. ``donor_findings`` maps
    a wrong-patient study's StudyInstanceUID to what the donor image shows, so
    its report describes the filed image (see `fusion.cohort.reporting`).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x4F48,)))
    b = _Builder(scenario, site, rng)
    b.organization()
    b.patient()
    donor_findings = donor_findings or {}

    plans = sorted(scenario.studies, key=lambda p: p.order_datetime)
    first_order = plans[0].order_datetime if plans else b.snapshot
    first_onset = min((e.onset for e in scenario.conditions), default=first_order)
    baseline = min(first_onset, first_order) - timedelta(days=float(rng.uniform(60.0, 500.0)))
    baseline = baseline.replace(hour=int(rng.integers(8, 17)), minute=int(rng.integers(60)), second=0)
    enc = b.encounter("AMB", baseline, baseline + timedelta(minutes=40))
    b.body_measures(baseline, enc, height=True)
    b.panel((*VITALS, *CBC, *BMP), baseline + timedelta(minutes=10), enc)

    # study encounters first (conditions point at the encounter that diagnosed them)
    encounters: list[tuple[StudyPlan, str, str, datetime]] = []
    for plan in plans:
        cls = _encounter_class(plan, scenario)
        start = plan.order_datetime - timedelta(hours=float(rng.uniform(0.2, 3.0)))
        end = plan.report_datetime + (
            timedelta(days=float(rng.uniform(2.0, 8.0))) if cls == "IMP" else timedelta(0)
        )
        encounters.append((plan, cls, b.encounter(cls, start, end), start))

    def anchor_for(episode: ConditionEpisode) -> tuple[datetime, str | None]:
        for plan, _, eid, _ in encounters:
            if plan.reason is episode.condition:
                return plan.study_datetime, eid
        if encounters:
            return encounters[0][0].study_datetime, encounters[0][2]
        return episode.onset, None

    for episode in scenario.conditions:
        anchor, eid = anchor_for(episode)
        b.condition(episode, eid, first_order)
    for episode in scenario.conditions:
        anchor, eid = anchor_for(episode)
        b.medications(episode, anchor, eid)
        b.procedures(episode, anchor, eid)

    seen_devices: set[str] = set()
    for plan, _cls, eid, start in encounters:
        when = start + timedelta(minutes=float(rng.uniform(5.0, 30.0)))
        b.body_measures(when, eid, height=False)
        keys: list[str] = [*VITALS, *CBC, *BMP]
        for episode in scenario.conditions:
            keys.extend(CONDITION_PANELS[episode.condition])
        if rng.random() < 0.35:
            keys.append("crp")
        b.panel(keys, when, eid)
        did = b.device(plan, seen_devices)
        findings = filed_image_findings(plan, donor_findings.get(plan.study_instance_uid))
        b.imaging(plan, eid, did, findings)

    acute = [e for e in scenario.conditions if e.abatement is not None]
    if acute and plans and rng.random() < 0.6:
        when = plans[-1].report_datetime + timedelta(days=float(rng.uniform(1.0, 5.0)))
        if when < b.snapshot and (scenario.deceased is None or when < scenario.deceased):
            eid = b.encounter("AMB", when, when + timedelta(minutes=30))
            keys = [*VITALS, *CBC]
            for episode in acute:
                keys.extend(CONDITION_PANELS[episode.condition])
            b.panel(keys, when + timedelta(minutes=5), eid)

    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, '{}/{}'.format(r['resourceType'], r['id']))}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in b.resources
    ]
    logger.debug("bundle with %d entries", len(entries))
    return {
        "resourceType": "Bundle",
        "id": f"cohort-{scenario.patient_id}",
        "type": "transaction",
        "timestamp": _iso(b.snapshot),
        "entry": entries,
    }
