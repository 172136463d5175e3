from dataclasses import replace

import pytest

from connectors.domain import Coding
from fusion.checks import order

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def run_all(case, ctx):
    return [
        f
        for check in (
            order.check_order_modality,
            order.check_order_body_part,
            order.check_laterality,
            order.check_order_missing,
            order.check_imaging_study,
        )
        for f in check(case, ctx)
    ]


@pytest.mark.parametrize("modality", ["DX", "CT", "MR"])
def test_consistent_case_has_no_order_finding(cf, modality):
    assert run_all(cf.make_case(modality), cf.ctx()) == []


def test_order_for_ct_but_dx_images(cf):
    case = cf.with_order(cf.make_case("DX"), codes=(Coding(LOINC, "24627-2", "CT Chest"),))
    assert cf.codes(order.check_order_modality(case, cf.ctx())) == {("order.modality-mismatch", "critical")}


def test_report_for_mr_but_dx_images(cf):
    case = cf.with_report(cf.make_case("DX"), codes=(Coding(LOINC, "24590-2", "MR Brain"),))
    assert cf.codes(order.check_order_modality(case, cf.ctx())) == {
        ("order.report-modality-mismatch", "critical")
    }
    assert cf.codes(order.check_order_body_part(case, cf.ctx())) == {
        ("order.report-body-part-mismatch", "warning")
    }


def test_cr_images_fulfil_an_xr_order(cf):
    case = cf.with_series(cf.make_case("DX"), modality="CR")
    assert order.check_order_modality(case, cf.ctx()) == []


def test_display_text_fallback_for_unknown_code(cf):
    case = cf.with_order(cf.make_case("DX"), codes=(Coding("urn:local", "X1", "MRI of the brain"),))
    assert cf.codes(run_all(case, cf.ctx())) == {
        ("order.modality-mismatch", "critical"),
        ("order.body-part-mismatch", "warning"),
    }


def test_unknown_code_without_text_gives_no_finding(cf):
    case = cf.with_order(cf.make_case("DX"), codes=(Coding("urn:local", "X1", None),))
    assert order.check_order_modality(case, cf.ctx()) == []


def test_body_part_mismatch(cf):
    case = cf.with_series(cf.make_case("DX"), body_part_examined="KNEE")
    assert cf.codes(order.check_order_body_part(case, cf.ctx())) == {
        ("order.body-part-mismatch", "warning"),
        ("order.report-body-part-mismatch", "warning"),
    }


def test_body_part_synonym(cf):
    case = cf.with_series(cf.make_case("MR"), body_part_examined="BRAIN")
    assert order.check_order_body_part(case, cf.ctx()) == []


@pytest.mark.parametrize("site", [
    {"body_site": (Coding(SNOMED, "24028007", "Right"),)},
    {"text": "XR chest, right side"},
])  # fmt: skip
def test_laterality_mismatch(cf, site):
    case = cf.with_instances(cf.with_order(cf.make_case("DX"), **site), laterality="L")
    assert cf.codes(order.check_laterality(case, cf.ctx())) == {("order.laterality-mismatch", "critical")}


def test_laterality_match(cf):
    case = cf.with_order(cf.make_case("DX"), body_site=(Coding(SNOMED, "7771000", "Left"),))
    case = cf.with_instances(case, laterality="L")
    assert order.check_laterality(case, cf.ctx()) == []


def test_order_missing(cf):
    case = cf.make_case()
    no_order = replace(case, order=None, record=replace(case.record, orders=()))
    assert cf.codes(order.check_order_missing(no_order, cf.ctx())) == {("order.missing", "warning")}
    assert order.check_order_missing(replace(case, order=None), cf.ctx()) == []  # found by accession
    assert order.check_order_missing(replace(no_order, record=None), cf.ctx()) == []


def test_imaging_study_modality_mismatch(cf):
    case = cf.make_case("DX")
    case = replace(case, imaging_study=replace(case.imaging_study, modalities=("CT",)))
    assert cf.codes(order.check_imaging_study(case, cf.ctx())) == {
        ("order.imagingstudy-modality-mismatch", "critical")
    }


def test_imaging_study_uid_mismatch(cf):
    case = cf.make_case("DX")
    case = replace(case, imaging_study=replace(case.imaging_study, study_instance_uid="1.2.3.4"))
    assert cf.codes(order.check_imaging_study(case, cf.ctx())) == {
        ("order.imagingstudy-uid-mismatch", "critical")
    }


def test_expected_exam():
    assert order.expected_exam([Coding(LOINC, "36554-4")]) == order.ExpectedExam("DX", "CHEST", "loinc")
    assert order.expected_exam([], "CT head without contrast") == order.ExpectedExam("CT", "HEAD", "text")
    assert order.expected_exam([Coding(LOINC, "0000-0", "Something")]) is None
