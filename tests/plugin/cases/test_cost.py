"""The cost weight: modality, and follow-on orders resting on the study."""

from __future__ import annotations

from datetime import UTC, datetime

from connectors.domain import (
    Case,
    Coding,
    Condition,
    DiagnosticReport,
    ImagingOrder,
    ImagingStudyRecord,
    Patient,
    PatientIdentity,
    PatientRecord,
    Series,
    Study,
)
from plugin.cases import BILLED_FACTOR, CostWeight, cost_weight

SNOMED = "http://snomed.info/sct"
NODULE = Coding(SNOMED, "786838002", "Pulmonary nodule")
STUDY_TIME = datetime(2026, 3, 1, 9, 0)  # naive, as DICOM gives it
BEFORE = datetime(2026, 2, 1, tzinfo=UTC)
AFTER = datetime(2026, 3, 10, tzinfo=UTC)


def _study(*modalities: str) -> Study:
    series = tuple(Series(f"1.2.3.{n}", m, ()) for n, m in enumerate(modalities))
    return Study("1.2.3", PatientIdentity("p1"), series, study_datetime=STUDY_TIME)


def _case(*orders: ImagingOrder, modalities: tuple[str, ...] = ("CT",)) -> Case:
    own = ImagingOrder("own", (), authored=BEFORE, reason_references=("Condition/c1",))
    report = DiagnosticReport("r1", (), imaging_study_ids=("is1",), conclusion_codes=(NODULE,))
    record = PatientRecord(
        Patient("p1"),
        conditions=(Condition("c1", (NODULE,)), Condition("c2", (Coding(SNOMED, "38341003"),))),
        orders=(own, *orders),
        reports=(report,),
    )
    return Case(
        _study(*modalities),
        record,
        order=own,
        report=report,
        imaging_study=ImagingStudyRecord("is1", "1.2.3"),
    )


def test_modality_alone() -> None:
    assert cost_weight(_case(modalities=("DX",))) == CostWeight(1.0, "DX", 1.0, ())
    assert cost_weight(_case(modalities=("SR", "CT", "US"))).modality == "CT"
    assert cost_weight(_case(modalities=("SR",))) == CostWeight(1.0, None, 1.0, ())
    # the study's own order is not a follow-on, even though it names the condition
    assert cost_weight(_case()).weight == 3.0
    assert cost_weight(Case(_study("MR"))).weight == 3.0  # no record


def test_follow_on_orders_that_rest_on_the_study() -> None:
    biopsy = ImagingOrder("biopsy", (), authored=AFTER, reason_references=("Condition/c1",))
    by_code = ImagingOrder("pet", (), occurrence=AFTER, reason_codes=(NODULE,))
    by_study = ImagingOrder("followup", (), reason_references=("ImagingStudy/is1",))  # no date
    by_report = ImagingOrder("surgery", (), authored=AFTER, reason_references=("DiagnosticReport/r1",))
    for order in (biopsy, by_code, by_study, by_report):
        weight = cost_weight(_case(order))
        assert weight.follow_on_orders == (f"ServiceRequest/{order.id}",)
        assert weight.weight == 3.0 * BILLED_FACTOR


def test_orders_that_do_not_count() -> None:
    earlier = ImagingOrder("earlier", (), authored=BEFORE, reason_references=("Condition/c1",))
    undated = ImagingOrder("undated", (), reason_references=("Condition/c1",))
    unrelated = ImagingOrder("knee", (), authored=AFTER, reason_references=("Condition/c2",))
    other_study = ImagingOrder("other", (), authored=AFTER, reason_references=("ImagingStudy/is9",))
    weight = cost_weight(_case(earlier, undated, unrelated, other_study))
    assert weight == CostWeight(3.0, "CT", 3.0, ())


def test_a_record_given_apart_from_the_case() -> None:
    case = _case()
    assert case.record is not None
    pet = ImagingOrder("pet", (), authored=AFTER, reason_references=("ImagingStudy/is1",))
    richer = PatientRecord(case.record.patient, orders=(*case.record.orders, pet))
    assert cost_weight(case, richer).follow_on_orders == ("ServiceRequest/pet",)
