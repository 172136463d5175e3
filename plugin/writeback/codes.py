"""The terminology of write-back: which code says what, in FHIR and in DICOM SR.

Standard codes are used where a standard has the concept: DICOM (``DCM``) for the
Measurement Report, the device observer and the algorithm identification, SNOMED CT
(``SCT``) for Yes / No / Unknown and the imaging procedure, UCUM for "no units".
Neither SNOMED CT, LOINC, HL7 v3 ActCode nor DICOM has a concept for "image
inconsistent with the patient's record" or "synthetic or tampered image", so those
are the project's own:

- in FHIR, codes of the CodeSystems under `NAMESPACE` (a project namespace: a site
  can publish CodeSystem resources at these URLs; nothing resolves them today);
- in DICOM, codes of the private coding scheme `CODING_SCHEME` (``99XCHECK``: the
  ``99`` prefix marks a private scheme, PS3.16 section 8.2), declared in every SR's
  Coding Scheme Identification Sequence by `coding_scheme_identification`.
"""

from __future__ import annotations

from enum import StrEnum

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

__all__ = [
    "ALGORITHM_SYSTEM",
    "CODING_SCHEME",
    "FINDING_SYSTEM",
    "IDENTIFIER_SYSTEM",
    "IMAGE_CONSISTENT_WITH_RECORD",
    "ISSUE_SYSTEM",
    "MANUFACTURER",
    "MODEL_SHA256_SYSTEM",
    "NAMESPACE",
    "NO",
    "PROBABILITY_INCONSISTENT",
    "PROBABILITY_REGION_TAMPERED",
    "PROBABILITY_SYNTHETIC",
    "REVIEW_RECOMMENDED",
    "REVIEW_SCORE",
    "SYNTHETIC_OR_TAMPERED",
    "TAMPER_REGION",
    "UNKNOWN",
    "YES",
    "IssueCode",
    "coding_scheme_identification",
]

#: who makes the write-back's resources and reports (DICOM Manufacturer, FHIR Device.manufacturer)
MANUFACTURER = "imaging-crosscheck"

# -- FHIR -------------------------------------------------------------------------------------------

#: the project's FHIR namespace; CodeSystem and NamingSystem URLs hang under it
NAMESPACE = "https://imaging-crosscheck.org/fhir"
#: DetectedIssue.code and RiskAssessment.code / prediction.outcome (`IssueCode`)
ISSUE_SYSTEM = f"{NAMESPACE}/CodeSystem/issue"
#: DetectedIssue.evidence.code: ``Finding.code`` (``identity.birth-date-mismatch``, ``model.synthetic``)
FINDING_SYSTEM = f"{NAMESPACE}/CodeSystem/finding"
#: RiskAssessment.method: the model's name
ALGORITHM_SYSTEM = f"{NAMESPACE}/CodeSystem/algorithm"
#: Device.identifier of the algorithm: the sha256 of the model's weights
MODEL_SHA256_SYSTEM = f"{NAMESPACE}/NamingSystem/model-sha256"
#: the identifier of a DetectedIssue or RiskAssessment: a ``urn:uuid:`` (RFC 3986 URI) derived from
#: the StudyInstanceUID and the model's sha256, so the same result written twice is one resource
IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"


class IssueCode(StrEnum):
    """Codes of `ISSUE_SYSTEM`; ``display`` is the concept's name."""

    IMAGE_RECORD_MISMATCH = "image-record-mismatch"
    SYNTHETIC_IMAGE = "synthetic-image"
    FLAGGED_FOR_REVIEW = "flagged-for-review"
    INTEGRITY_ASSESSMENT = "image-integrity-assessment"

    @property
    def display(self) -> str:
        return _ISSUE_DISPLAY[self.value]


_ISSUE_DISPLAY = {
    "image-record-mismatch": "Image inconsistent with the patient's record",
    "synthetic-image": "Synthetic or tampered image",
    "flagged-for-review": "Imaging study flagged for review by image cross-check",
    "image-integrity-assessment": "Image integrity and image-record consistency",
}


# -- DICOM SR ---------------------------------------------------------------------------------------

#: the private coding scheme designator of the project's DICOM concepts (SH: at most 16 characters)
CODING_SCHEME = "99XCHECK"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning)


#: qualitative evaluation: is the image consistent with the patient's record (Yes / No / Unknown)
IMAGE_CONSISTENT_WITH_RECORD = _private("IMGREC", "Image consistent with patient record")
#: qualitative evaluation: is the image synthetic (AI-generated) or tampered (Yes / No / Unknown)
SYNTHETIC_OR_TAMPERED = _private("SYNTAMP", "Synthetic or tampered image")
#: qualitative evaluation: does the study deserve a person's review (``CrossCheckResult.flagged``)
REVIEW_RECOMMENDED = _private("REVIEW", "Review recommended")
#: measurement: calibrated probability that the image is inconsistent with the record
PROBABILITY_INCONSISTENT = _private("PINCONS", "Probability image inconsistent with record")
#: measurement: calibrated probability that the image is synthetic or tampered
PROBABILITY_SYNTHETIC = _private("PSYNTH", "Probability image synthetic or tampered")
#: measurement: the overall review score, compared with the threshold
REVIEW_SCORE = _private("SCORE", "Cross-check review score")
#: finding type of the planar ROI: the region of the tamper heatmap with the strongest traces
TAMPER_REGION = _private("TAMPREG", "Region with strongest tamper traces")
#: measurement in that ROI: the model's probability that the region is tampered
PROBABILITY_REGION_TAMPERED = _private("PREGTAMP", "Probability region tampered")

YES = CodedConcept.from_code(codes.SCT.Yes)
NO = CodedConcept.from_code(codes.SCT.No)
UNKNOWN = CodedConcept.from_code(codes.SCT.Unknown)


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares `CODING_SCHEME`."""
    return CodingSchemeIdentificationItem(
        designator=CODING_SCHEME,
        name="imaging-crosscheck concepts",
        version="1",
        responsible_organization=MANUFACTURER,
    )
