"""The record side of the simulated cohort: drawn scenarios and their FHIR Bundles."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from fusion.cohort.draw import draw_finding, draw_scenario
from fusion.cohort.records import build_bundle
from fusion.cohort.scenario import ClinicalCondition, Manipulation, PatientScenario, StudyKind
from fusion.cohort.site import default_site
from fusion.cohort.terminology import FINDING_CODES, ICD10CM, SNOMED

SITE = default_site(7)


def _scenario(i: int) -> PatientScenario:
    return draw_scenario(np.random.default_rng([7, i]), SITE, i)


@pytest.fixture(scope="module")
def scenarios() -> list[PatientScenario]:
    return [_scenario(i) for i in range(300)]


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _references(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_references(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_references(item))
    return found


def _first(scenarios: list[PatientScenario], pred: Any) -> PatientScenario:
    return next(s for s in scenarios if pred(s))


# -- the drawn scenarios ------------------------------------------------------------------


def test_scenarios_are_coherent(scenarios: list[PatientScenario]) -> None:
    for s in scenarios:
        assert s.patient_id == f"pat-{int(s.patient_id[4:]):06d}"
        assert 1 <= len(s.studies) <= 2 and len(s.conditions) <= 2
        for plan in s.studies:
            age = s.age_at(plan.study_datetime.date())
            assert 17.0 <= age <= 97.0
            assert plan.order_datetime < plan.study_datetime < plan.report_datetime
            assert all(e.onset < plan.order_datetime for e in s.conditions)
            assert plan.study_datetime.utcoffset() is not None
            for uid in (plan.study_instance_uid, *plan.series_instance_uids):
                assert uid.startswith(SITE.uid_root + ".") and len(uid) <= 64
            assert plan.device in SITE.devices_for(plan.kind.modality)
            region = "head" if plan.kind is StudyKind.BRAIN_MR else "chest"
            assert all(f.condition.region == region for f in plan.image_findings)
            assert {f.condition for f in plan.image_findings} <= {e.condition for e in s.conditions}
            if plan.kind is StudyKind.CHEST_DX:
                assert plan.views in {("AP",), ("PA", "LL")}
                assert len(plan.series_instance_uids) == len(plan.views)
            else:
                assert plan.slices == (24 if plan.kind is StudyKind.CHEST_CT else 20)
        if s.deceased is not None:
            assert s.deceased > max(p.report_datetime for p in s.studies)


def test_prevalence_is_plausible(scenarios: list[PatientScenario]) -> None:
    healthy = sum(not s.conditions for s in scenarios) / len(scenarios)
    assert 0.22 < healthy < 0.45
    for s in scenarios:
        if not s.conditions:
            assert all(not p.image_findings and p.reason is None for p in s.studies)
    # chest conditions are imaged in the chest, brain conditions in the head
    for s in scenarios:
        if s.studies[0].reason is not None:
            assert (s.studies[0].kind is StudyKind.BRAIN_MR) == (s.studies[0].reason.region == "head")
    ids = [p.study_instance_uid for s in scenarios for p in s.studies]
    assert len(set(ids)) == len(ids)
    orders = [p.order_id for s in scenarios for p in s.studies]
    assert len(set(orders)) == len(orders)


def test_draw_is_deterministic() -> None:
    assert _scenario(3) == _scenario(3)
    assert _scenario(3) != _scenario(4)


def test_default_site_has_devices_per_modality() -> None:
    assert len(SITE.devices_for("DX")) >= 2 and len(SITE.devices_for("CT")) >= 2
    assert len(SITE.devices_for("MR")) >= 1
    assert default_site(7) == SITE
    assert default_site(8).devices != SITE.devices  # serials follow the seed
    assert all(ch.isdigit() or ch == "." for ch in SITE.uid_root)


# -- the bundles ----------------------------------------------------------------------------


def test_bundles_validate_with_r4b(scenarios: list[PatientScenario]) -> None:
    for s in scenarios[:12]:
        bundle = build_bundle(s, SITE, 1)
        Bundle.model_validate(bundle)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_entries_are_puts_whose_references_resolve(scenarios: list[PatientScenario]) -> None:
    for s in scenarios[:20]:
        bundle = build_bundle(s, SITE, 2)
        assert bundle["type"] == "transaction"
        urls = set()
        full_urls = set()
        for entry in bundle["entry"]:
            r = entry["resource"]
            assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
            assert entry["fullUrl"].startswith("urn:uuid:")
            urls.add(entry["request"]["url"])
            full_urls.add(entry["fullUrl"])
        assert len(urls) == len(bundle["entry"]) == len(full_urls)
        refs = _references(bundle)
        assert refs and set(refs) <= urls
        assert f"Patient/{s.patient_id}" in urls


def test_patient_and_imaging_resources_match_the_scenario(scenarios: list[PatientScenario]) -> None:
    s = _first(scenarios, lambda s: len(s.studies) == 2)
    bundle = build_bundle(s, SITE, 3)
    (patient,) = _resources(bundle, "Patient")
    assert patient["identifier"][0]["value"] == s.mrn
    assert patient["identifier"][0]["type"]["coding"][0]["code"] == "MR"
    assert patient["identifier"][0]["system"] == SITE.mrn_system
    assert patient["name"][0] == {"use": "official", "family": s.family, "given": list(s.given)}
    assert date.fromisoformat(patient["birthDate"]) == s.birth_date
    studies = {r["id"]: r for r in _resources(bundle, "ImagingStudy")}
    orders = {r["id"]: r for r in _resources(bundle, "ServiceRequest")}
    reports = {r["id"]: r for r in _resources(bundle, "DiagnosticReport")}
    devices = {r["id"]: r for r in _resources(bundle, "Device")}
    for plan in s.studies:
        study = studies[plan.imaging_study_id]
        assert {
            "system": "urn:dicom:uid",
            "value": f"urn:oid:{plan.study_instance_uid}",
            "use": "official",
        } in (study["identifier"])
        assert [x["uid"] for x in study["series"]] == list(plan.series_instance_uids)
        assert study["basedOn"] == [{"reference": f"ServiceRequest/{plan.order_id}"}]
        order = orders[plan.order_id]
        acsn = [i for i in order["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"]
        assert acsn[0]["value"] == plan.accession_number and acsn[0]["system"] == SITE.accession_system
        assert order["category"][0]["coding"][0]["code"] == "363679005"
        report = reports[plan.report_id]
        assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{plan.imaging_study_id}"}]
        assert report["category"][0]["coding"][0]["code"] == "RAD"
        assert report["code"]["coding"][0]["code"] == "18748-4"
        actor = study["series"][0]["performer"][0]["actor"]["reference"].split("/")[1]
        assert devices[actor]["serialNumber"] == plan.device.serial_number


def test_conditions_carry_snomed_and_icd10(scenarios: list[PatientScenario]) -> None:
    s = _first(scenarios, lambda s: len(s.conditions) == 2)
    conditions = _resources(build_bundle(s, SITE, 4), "Condition")
    assert len(conditions) == 2
    for c in conditions:
        systems = [x["system"] for x in c["code"]["coding"]]
        assert systems == [SNOMED, ICD10CM]
    pneumonia = _first(
        scenarios, lambda s: s.conditions and s.conditions[0].condition is ClinicalCondition.PNEUMONIA
    )
    (c, *_) = _resources(build_bundle(pneumonia, SITE, 4), "Condition")
    assert [x["code"] for x in c["code"]["coding"]] == ["233604007", "J18.9"]


def _lab_values(bundle: dict[str, Any], loinc: str) -> list[float]:
    return [
        o["valueQuantity"]["value"]
        for o in _resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] == loinc
    ]


def _study_labs(scenario: PatientScenario, bundle: dict[str, Any], loinc: str) -> list[float]:
    """The values measured in the encounter of the first study."""
    enc = next(
        r["encounter"]["reference"]
        for r in _resources(bundle, "ImagingStudy")
        if r["id"] == scenario.studies[0].imaging_study_id
    )
    return [
        o["valueQuantity"]["value"]
        for o in _resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] == loinc and o["encounter"]["reference"] == enc
    ]


def test_labs_follow_conditions(scenarios: list[PatientScenario]) -> None:
    def mean_at_study(cond: ClinicalCondition | None, loinc: str) -> float:
        values: list[float] = []
        for i, s in enumerate(scenarios):
            has = {e.condition for e in s.conditions}
            if (cond is None and not has) or (cond is not None and has == {cond}):
                values.extend(_study_labs(s, build_bundle(s, SITE, i), loinc))
        assert len(values) >= 5, (cond, loinc, len(values))
        return float(np.mean(values))

    assert mean_at_study(ClinicalCondition.PNEUMONIA, "1988-5") > 5 * mean_at_study(None, "1988-5")
    assert mean_at_study(ClinicalCondition.PNEUMONIA, "6690-2") > mean_at_study(None, "6690-2") + 3
    assert mean_at_study(ClinicalCondition.PNEUMONIA, "8310-5") > mean_at_study(None, "8310-5") + 0.5
    assert mean_at_study(ClinicalCondition.HEART_FAILURE, "33762-6") > 300.0


def test_interpretation_follows_reference_range(scenarios: list[PatientScenario]) -> None:
    seen = set()
    for i, s in enumerate(scenarios[:40]):
        for o in _resources(build_bundle(s, SITE, i), "Observation"):
            if "referenceRange" not in o:
                continue
            value = o["valueQuantity"]["value"]
            low = o["referenceRange"][0].get("low", {}).get("value")
            high = o["referenceRange"][0].get("high", {}).get("value")
            code = o["interpretation"][0]["coding"][0]["code"]
            expected = "H" if high is not None and value > high else ("L" if low and value < low else "N")
            assert code == expected, o["code"]["text"]
            assert o["valueQuantity"]["system"] == "http://unitsofmeasure.org"
            seen.add(code)
    assert seen == {"H", "L", "N"}


def test_bundle_is_deterministic_for_a_seed(scenarios: list[PatientScenario]) -> None:
    s = scenarios[5]
    a = json.dumps(build_bundle(s, SITE, 11), sort_keys=True)
    assert a == json.dumps(build_bundle(s, SITE, 11), sort_keys=True)
    assert a != json.dumps(build_bundle(s, SITE, 12), sort_keys=True)


def _conclusion_codes(bundle: dict[str, Any], report_id: str) -> set[str]:
    report = next(r for r in _resources(bundle, "DiagnosticReport") if r["id"] == report_id)
    return {c["coding"][0]["code"] for c in report["conclusionCode"]}


def test_report_describes_the_filed_image(scenarios: list[PatientScenario]) -> None:
    healthy = _first(scenarios, lambda s: not s.conditions and s.studies[0].kind is StudyKind.CHEST_DX)
    plan = healthy.studies[0]
    assert _conclusion_codes(build_bundle(healthy, SITE, 1), plan.report_id) == {"17621005"}

    # injected: the report describes the lesion, the record has no such condition
    nodule = draw_finding(np.random.default_rng(0), ClinicalCondition.LUNG_NODULE, "left", 0.3)
    injected = replace(
        healthy,
        studies=(
            replace(plan, manipulation=Manipulation.FINDING_INJECTED, manipulated_finding=nodule),
            *healthy.studies[1:],
        ),
    )
    bundle = build_bundle(injected, SITE, 1)
    assert _conclusion_codes(bundle, plan.report_id) == {FINDING_CODES[ClinicalCondition.LUNG_NODULE].code}
    assert "nodule" in next(r for r in _resources(bundle, "DiagnosticReport"))["conclusion"]
    assert not _resources(bundle, "Condition")

    # removed: the record keeps the condition, the report no longer mentions it
    sick = _first(scenarios, lambda s: len(s.studies[0].image_findings) == 1)
    splan = sick.studies[0]
    finding = splan.image_findings[0]
    assert FINDING_CODES[finding.condition].code in _conclusion_codes(
        build_bundle(sick, SITE, 1), splan.report_id
    )
    removed = replace(
        sick,
        studies=(
            replace(splan, manipulation=Manipulation.FINDING_REMOVED, manipulated_finding=finding),
            *sick.studies[1:],
        ),
    )
    bundle = build_bundle(removed, SITE, 1)
    assert FINDING_CODES[finding.condition].code not in _conclusion_codes(bundle, splan.report_id)
    assert _resources(bundle, "Condition")

    # wrong patient: the donor's findings are reported
    wrong = replace(
        healthy,
        studies=(
            replace(plan, manipulation=Manipulation.WRONG_PATIENT, donor_patient_id="pat-999999"),
            *healthy.studies[1:],
        ),
    )
    bundle = build_bundle(wrong, SITE, 1, donor_findings={plan.study_instance_uid: (nodule,)})
    assert _conclusion_codes(bundle, plan.report_id) == {FINDING_CODES[ClinicalCondition.LUNG_NODULE].code}
