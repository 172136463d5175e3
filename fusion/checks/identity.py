"""Identity checks: does the DICOM Patient module name the FHIR Patient?

PatientID against the Patient's identifiers, PatientName (family name and the
initial of the first given name, compared without case, accents, punctuation
or the PN ``^`` separators), PatientBirthDate, PatientSex and PatientAge.

Messages never quote the values: they say *what* differs and by how much. The
values themselves are in the evidence, which goes to authorised systems only.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from connectors.domain import Case, LinkMethod
from fusion.checks.context import CheckContext
from fusion.checks.dates import study_datetime
from fusion.result import Evidence, Finding, Severity

__all__ = [
    "age_in_years",
    "check_birth_date",
    "check_patient_age",
    "check_patient_id",
    "check_patient_name",
    "check_sex",
    "normalise_name",
    "parse_patient_age",
]

_STRONG_LINKS = {LinkMethod.STUDY_INSTANCE_UID, LinkMethod.ACCESSION_NUMBER}
_DICOM_SEX = {"M": "male", "F": "female", "O": "other"}
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def normalise_name(text: str) -> tuple[str, ...]:
    """Name tokens without case, accents or punctuation: "Núñez-Díaz^Ana" -> ("nunez", "diaz", "ana")."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return tuple(t for t in re.split(r"[^0-9a-z]+", plain) if t)


def parse_patient_age(value: str | None) -> float | None:
    """DICOM PatientAge ("045Y", "006M", "003W", "010D") in years; ``None`` if malformed."""
    if not value:
        return None
    m = _AGE_RE.match(value)
    if m is None:
        return None
    return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]


def age_in_years(birth: date, on: date) -> float:
    """Age on a date in years, as a fraction (so "045Y" compares to 45.9 correctly)."""
    return (on - birth).days / 365.25


def _patient_ref(case: Case) -> str:
    assert case.record is not None
    return f"Patient/{case.record.patient.id}"


def check_patient_id(case: Case, ctx: CheckContext) -> list[Finding]:
    """DICOM PatientID (or OtherPatientIDs) must be one of the Patient's identifier values.

    Critical when the study was linked to the record by StudyInstanceUID or
    AccessionNumber: the order says it is this patient's study, and the header
    names someone else. A warning otherwise (the caller paired them, and the
    DICOM side may use another issuer).
    """
    if case.record is None:
        return []
    patient = case.record.patient
    dicom = case.study.patient
    if not patient.identifiers:
        return []
    uid = case.study_instance_uid
    if not (dicom.patient_id or "").strip():
        return [
            Finding(
                "identity.patient-id-missing",
                Severity.WARNING,
                "The DICOM header carries no PatientID to compare with the FHIR Patient's identifiers.",
                (Evidence("dicom", "PatientID", dicom.patient_id, uid=uid),),
            )
        ]
    known = {i.value.strip().casefold() for i in patient.identifiers}
    dicom_ids = [dicom.patient_id or "", *dicom.other_ids]
    if any(v.strip().casefold() in known for v in dicom_ids):
        return []
    strong = case.link in _STRONG_LINKS
    how = "by its UID or accession number " if strong else ""
    return [
        Finding(
            "identity.patient-id-mismatch",
            Severity.CRITICAL if strong else Severity.WARNING,
            f"The study was linked to this patient {how}but its DICOM PatientID matches none of "
            "the patient's identifiers.",
            (
                Evidence("dicom", "PatientID", dicom.patient_id, uid=uid),
                Evidence("fhir", _patient_ref(case), [i.value for i in patient.identifiers]),
                Evidence("value", "link", str(case.link)),
            ),
        )
    ]


def _family_matches(dicom_family: tuple[str, ...], fhir_family: tuple[str, ...]) -> bool:
    """Equal, or one compound family name contains the other ("Garcia" vs "Garcia Lopez")."""
    if not dicom_family or not fhir_family:
        return True
    a, b = set(dicom_family), set(fhir_family)
    return a <= b or b <= a or "".join(dicom_family) == "".join(fhir_family)


def check_patient_name(case: Case, ctx: CheckContext) -> list[Finding]:
    """Family name must match; the first given name's initial should match."""
    if case.record is None or not case.study.patient.name:
        return []
    patient = case.record.patient
    dicom = case.study.patient
    if not patient.family:
        return []
    fhir_family = normalise_name(patient.family)
    raw = dicom.name or ""
    if "^" in raw:
        dicom_family = normalise_name(dicom.family or "")
        dicom_given = tuple(t for g in dicom.given for t in normalise_name(g))
    else:  # no PN components: "FAMILY GIVEN" or "GIVEN FAMILY" in one string
        tokens = normalise_name(raw)
        dicom_family = tuple(t for t in tokens if t in fhir_family) or tokens
        dicom_given = tuple(t for t in tokens if t not in fhir_family)
    evidence = (
        Evidence("dicom", "PatientName", raw, uid=case.study_instance_uid),
        Evidence("fhir", _patient_ref(case), "^".join([patient.family, " ".join(patient.given)])),
    )
    if not _family_matches(dicom_family, fhir_family):
        return [
            Finding(
                "identity.name-mismatch",
                Severity.CRITICAL,
                "The family name in the DICOM header differs from the FHIR Patient's family name.",
                evidence,
            )
        ]
    fhir_given = tuple(t for g in patient.given for t in normalise_name(g))
    if dicom_given and fhir_given and dicom_given[0][0] != fhir_given[0][0]:
        return [
            Finding(
                "identity.given-name-mismatch",
                Severity.WARNING,
                "The family name matches but the first given name in the DICOM header has another initial.",
                evidence,
            )
        ]
    return []


def _years_days(days: int) -> str:
    if abs(days) >= 365:
        years = round(abs(days) / 365.25)
        return f"{years} year{'' if years == 1 else 's'}"
    return f"{abs(days)} day{'' if abs(days) == 1 else 's'}"


def check_birth_date(case: Case, ctx: CheckContext) -> list[Finding]:
    """DICOM PatientBirthDate must equal the FHIR Patient's birthDate."""
    if case.record is None:
        return []
    fhir_birth = case.record.patient.birth_date
    dicom_birth = case.study.patient.birth_date
    if fhir_birth is None or dicom_birth is None or fhir_birth == dicom_birth:
        return []
    days = (dicom_birth - fhir_birth).days
    swapped = (
        dicom_birth.year == fhir_birth.year
        and dicom_birth.month == fhir_birth.day
        and dicom_birth.day == fhir_birth.month
    )
    hint = " (day and month swapped)" if swapped else ""
    return [
        Finding(
            "identity.birth-date-mismatch",
            Severity.CRITICAL,
            "DICOM PatientBirthDate differs from the FHIR Patient's birth date "
            f"by {_years_days(days)}{hint}.",
            (
                Evidence("dicom", "PatientBirthDate", dicom_birth.isoformat(), uid=case.study_instance_uid),
                Evidence("fhir", _patient_ref(case), fhir_birth.isoformat()),
                Evidence("value", "difference-days", days),
            ),
        )
    ]


def check_sex(case: Case, ctx: CheckContext) -> list[Finding]:
    """DICOM PatientSex (M/F/O) against the FHIR administrative gender.

    M against female (or F against male) is critical; O against male/female, or
    M/F against other, is a warning. Unknown or absent values are not compared.
    """
    if case.record is None:
        return []
    gender = (case.record.patient.gender or "").strip().lower()
    dicom_sex = (case.study.patient.sex or "").strip().upper()
    if gender in {"", "unknown"} or dicom_sex not in _DICOM_SEX:
        return []
    dicom_gender = _DICOM_SEX[dicom_sex]
    if dicom_gender == gender:
        return []
    binary = {dicom_gender, gender} == {"male", "female"}
    return [
        Finding(
            "identity.sex-mismatch",
            Severity.CRITICAL if binary else Severity.WARNING,
            f"DICOM PatientSex ({dicom_gender}) differs from the FHIR Patient's gender ({gender}).",
            (
                Evidence("dicom", "PatientSex", case.study.patient.sex, uid=case.study_instance_uid),
                Evidence("fhir", _patient_ref(case), gender),
            ),
        )
    ]


def check_patient_age(case: Case, ctx: CheckContext) -> list[Finding]:
    """DICOM PatientAge against the age computed from the FHIR birth date at the study date.

    PatientAge is truncated ("045Y" for 45.9 years), so the computed age may
    exceed it by up to one unit; beyond ``ctx.age_tolerance_years`` more it warns.
    """
    if case.record is None or case.record.patient.birth_date is None:
        return []
    when = study_datetime(case.study)
    raw = case.study.patient.age
    stated = parse_patient_age(raw)
    if when is None or stated is None:
        return []
    assert raw is not None
    unit = _AGE_UNIT_YEARS[raw.strip()[-1].upper()]
    actual = age_in_years(case.record.patient.birth_date, when.date())
    # stated <= actual < stated + unit is exact; allow the tolerance either side
    if stated - ctx.age_tolerance_years <= actual < stated + unit + ctx.age_tolerance_years:
        return []
    diff = actual - stated if actual > stated else stated - actual
    return [
        Finding(
            "identity.age-mismatch",
            Severity.WARNING,
            f"DICOM PatientAge differs by about {diff:.1f} years from the age the FHIR birth date "
            "gives at the study date.",
            (
                Evidence("dicom", "PatientAge", raw, uid=case.study_instance_uid),
                Evidence("fhir", _patient_ref(case), case.record.patient.birth_date.isoformat()),
                Evidence("value", "age-at-study-years", round(actual, 2)),
            ),
        )
    ]
