from datetime import date

import pytest

from connectors.domain import LinkMethod
from fusion.checks import identity


def run_all(case, ctx):
    return [
        f
        for check in (
            identity.check_patient_id,
            identity.check_patient_name,
            identity.check_birth_date,
            identity.check_sex,
            identity.check_patient_age,
        )
        for f in check(case, ctx)
    ]


def test_consistent_case_has_no_identity_finding(cf):
    assert run_all(cf.make_case(), cf.ctx()) == []


def test_no_record_no_identity_finding(cf):
    from dataclasses import replace

    case = cf.with_dicom_patient(cf.make_case(), patient_id="OTHER", name="X^Y", sex="M")
    assert run_all(replace(case, record=None, order=None, report=None, imaging_study=None), cf.ctx()) == []


def test_patient_id_mismatch_is_critical_when_linked_by_accession(cf):
    case = cf.with_dicom_patient(cf.make_case(), patient_id="MRN-99999")
    findings = identity.check_patient_id(case, cf.ctx())
    assert cf.codes(findings) == {("identity.patient-id-mismatch", "critical")}
    assert "MRN-99999" not in findings[0].message
    assert any(e.value == "MRN-99999" for e in findings[0].evidence)
    assert any(e.reference == "Patient/pat-1" for e in findings[0].evidence)


def test_patient_id_mismatch_is_a_warning_when_paired_by_caller(cf):
    from dataclasses import replace

    case = replace(cf.with_dicom_patient(cf.make_case(), patient_id="MRN-99999"), link=LinkMethod.GIVEN)
    assert cf.codes(identity.check_patient_id(case, cf.ctx())) == {
        ("identity.patient-id-mismatch", "warning")
    }


def test_patient_id_found_in_other_patient_ids(cf):
    case = cf.with_dicom_patient(cf.make_case(), patient_id="LOCAL-1", other_ids=("MRN-12345",))
    assert identity.check_patient_id(case, cf.ctx()) == []


def test_patient_id_missing(cf):
    case = cf.with_dicom_patient(cf.make_case(), patient_id="")
    assert cf.codes(identity.check_patient_id(case, cf.ctx())) == {("identity.patient-id-missing", "warning")}


@pytest.mark.parametrize("name", ["NUNEZ^ANA", "nunez^a", "Núñez^Ana María", "NUÑEZ^ANA^^^", "Ana Nunez"])
def test_name_variants_match(cf, name):
    case = cf.with_dicom_patient(cf.make_case(), name=name)
    assert identity.check_patient_name(case, cf.ctx()) == []


def test_family_name_mismatch_is_critical_and_message_has_no_name(cf):
    case = cf.with_dicom_patient(cf.make_case(), name="SMITH^ANA")
    findings = identity.check_patient_name(case, cf.ctx())
    assert cf.codes(findings) == {("identity.name-mismatch", "critical")}
    text = findings[0].message.lower()
    assert "smith" not in text and "nunez" not in text and "ana" not in text.split()


def test_given_initial_mismatch_is_a_warning(cf):
    case = cf.with_dicom_patient(cf.make_case(), name="NUNEZ^BEATRIZ")
    assert cf.codes(identity.check_patient_name(case, cf.ctx())) == {
        ("identity.given-name-mismatch", "warning")
    }


def test_birth_date_mismatch_is_critical_with_difference_in_message(cf):
    case = cf.with_dicom_patient(cf.make_case(), birth_date=date(1967, 5, 17))
    findings = identity.check_birth_date(case, cf.ctx())
    assert cf.codes(findings) == {("identity.birth-date-mismatch", "critical")}
    assert "3 years" in findings[0].message
    assert "1967" not in findings[0].message


def test_birth_date_day_month_swap_is_named(cf):
    case = cf.with_dicom_patient(cf.with_fhir_patient(cf.make_case(), birth_date=date(1970, 5, 7)),
                                 birth_date=date(1970, 7, 5))  # fmt: skip
    findings = identity.check_birth_date(case, cf.ctx())
    assert "swapped" in findings[0].message


@pytest.mark.parametrize(("dicom", "gender", "expected"), [
    ("M", "female", "critical"),
    ("O", "female", "warning"),
    ("F", "other", "warning"),
])  # fmt: skip
def test_sex_mismatch(cf, dicom, gender, expected):
    case = cf.with_fhir_patient(cf.with_dicom_patient(cf.make_case(), sex=dicom), gender=gender)
    assert cf.codes(identity.check_sex(case, cf.ctx())) == {("identity.sex-mismatch", expected)}


@pytest.mark.parametrize(
    ("dicom", "gender"), [("F", "female"), ("f", "female"), ("M", "unknown"), (None, "male")]
)
def test_sex_consistent_or_not_comparable(cf, dicom, gender):
    case = cf.with_fhir_patient(cf.with_dicom_patient(cf.make_case(), sex=dicom), gender=gender)
    assert identity.check_sex(case, cf.ctx()) == []


def test_patient_age_off_by_more_than_a_year_warns(cf):
    case = cf.with_dicom_patient(cf.make_case(), age="050Y")
    findings = identity.check_patient_age(case, cf.ctx())
    assert cf.codes(findings) == {("identity.age-mismatch", "warning")}


@pytest.mark.parametrize("age", ["053Y", "054Y", "052Y", "645M", None, "garbage"])
def test_patient_age_within_tolerance_or_unparseable(cf, age):
    case = cf.with_dicom_patient(cf.make_case(), age=age)
    assert identity.check_patient_age(case, cf.ctx()) == []


@pytest.mark.parametrize(
    ("text", "years"), [("045Y", 45.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("x", None)]
)
def test_parse_patient_age(text, years):
    got = identity.parse_patient_age(text)
    assert got == pytest.approx(years) if years is not None else got is None


def test_normalise_name():
    assert identity.normalise_name("Núñez-Díaz^Ana") == ("nunez", "diaz", "ana")
