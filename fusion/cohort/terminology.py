"""The codes the simulated record uses: SNOMED CT, ICD-10-CM, LOINC, RxNorm, DICOM.

Real codes from the public code systems, so the cohort looks like a real
hospital's FHIR export to anything that reads it. Laboratory analytes live in
`fusion.cohort.labs` with their distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusion.cohort.scenario import ClinicalCondition, StudyKind

__all__ = [
    "CONDITION_CODES",
    "DCM",
    "DIAGNOSTIC_IMAGING_REPORT",
    "FINDING_CODES",
    "ICD10CM",
    "IMAGING_CATEGORY",
    "LATERALITY",
    "LOINC",
    "MEDICATIONS",
    "MODALITY_CODES",
    "NORMAL_FINDING",
    "PROCEDURES",
    "REGION_SITES",
    "RIB_FRACTURE_ICD_BY_SIDE",
    "RXNORM",
    "SNOMED",
    "UCUM",
    "V2_0203",
    "V3_ACT_CODE",
    "Code",
    "MedicationPlan",
    "ProcedurePlan",
    "coding",
    "imaging_code",
]

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@dataclass(frozen=True)
class Code:
    """A code with its display text (the system is given where it is used)."""

    code: str
    display: str


def coding(system: str, code: Code) -> dict[str, str]:
    """A FHIR ``Coding`` JSON object."""
    return {"system": system, "code": code.code, "display": code.display}


C = ClinicalCondition

CONDITION_CODES: dict[ClinicalCondition, tuple[Code, Code]] = {
    # (SNOMED CT, ICD-10-CM); rib fracture's ICD-10-CM code depends on the side (see records)
    C.PNEUMONIA: (Code("233604007", "Pneumonia"), Code("J18.9", "Pneumonia, unspecified organism")),
    C.HEART_FAILURE: (Code("84114007", "Heart failure"), Code("I50.9", "Heart failure, unspecified")),
    C.PLEURAL_EFFUSION: (
        Code("60046008", "Pleural effusion"),
        Code("J90", "Pleural effusion, not elsewhere classified"),
    ),
    C.PNEUMOTHORAX: (Code("36118008", "Pneumothorax"), Code("J93.9", "Pneumothorax, unspecified")),
    C.LUNG_NODULE: (Code("427359005", "Solitary nodule of lung"), Code("R91.1", "Solitary pulmonary nodule")),
    C.LUNG_CANCER: (
        Code("363358000", "Malignant tumor of lung"),
        Code("C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung"),
    ),
    C.RIB_FRACTURE: (
        Code("33737001", "Fracture of rib"),
        Code("S22.39XA", "Fracture of one rib, unspecified side, initial encounter for closed fracture"),
    ),
    C.BRAIN_TUMOUR: (
        Code("393563007", "Glioblastoma multiforme"),
        Code("C71.9", "Malignant neoplasm of brain, unspecified"),
    ),
    C.STROKE: (Code("422504002", "Ischemic stroke"), Code("I63.9", "Cerebral infarction, unspecified")),
}
RIB_FRACTURE_ICD_BY_SIDE = {
    "right": Code("S22.31XA", "Fracture of one rib, right side, initial encounter for closed fracture"),
    "left": Code("S22.32XA", "Fracture of one rib, left side, initial encounter for closed fracture"),
}

FINDING_CODES: dict[ClinicalCondition, Code] = {
    # what a radiologist codes as the imaging finding (DiagnosticReport.conclusionCode)
    C.PNEUMONIA: Code("95436008", "Lung consolidation"),
    C.HEART_FAILURE: Code("8186001", "Cardiomegaly"),
    C.PLEURAL_EFFUSION: Code("60046008", "Pleural effusion"),
    C.PNEUMOTHORAX: Code("36118008", "Pneumothorax"),
    C.LUNG_NODULE: Code("427359005", "Solitary nodule of lung"),
    C.LUNG_CANCER: Code("363358000", "Malignant tumor of lung"),
    C.RIB_FRACTURE: Code("33737001", "Fracture of rib"),
    C.BRAIN_TUMOUR: Code("126952004", "Neoplasm of brain"),
    C.STROKE: Code("432504007", "Cerebral infarction"),
}
NORMAL_FINDING = Code("17621005", "Normal")

LATERALITY = {"left": Code("7771000", "Left"), "right": Code("24028007", "Right")}

REGION_SITES: dict[str, Code] = {
    "chest": Code("51185008", "Thoracic structure"),
    "head": Code("12738006", "Brain structure"),
    "right-lung": Code("3341006", "Right lung structure"),
    "left-lung": Code("44029006", "Left lung structure"),
    "rib": Code("113197003", "Bone structure of rib"),
}

IMAGING_CATEGORY = Code("363679005", "Imaging")
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "Diagnostic imaging study")


def imaging_code(kind: StudyKind, views: tuple[str, ...]) -> Code:
    """The LOINC (Playbook) code of the imaging procedure ordered."""
    if kind is StudyKind.CHEST_CT:
        return Code("24627-2", "CT Chest")
    if kind is StudyKind.BRAIN_MR:
        return Code("24590-2", "MR Brain")
    if len(views) >= 2:
        return Code("36643-5", "XR Chest 2 Views")
    return Code("36572-6", "XR Chest AP")


MODALITY_CODES = {
    "DX": Code("DX", "Digital Radiography"),
    "CT": Code("CT", "Computed Tomography"),
    "MR": Code("MR", "Magnetic Resonance"),
}


@dataclass(frozen=True)
class MedicationPlan:
    """A medication a condition brings: RxNorm ingredient, dosage text, start and length."""

    code: Code
    dosage: str
    start_days: float  # after the first imaging order (negative: before, e.g. chronic therapy)
    days: float | None  # course length; None: long-term
    probability: float = 1.0


MEDICATIONS: dict[ClinicalCondition, tuple[MedicationPlan, ...]] = {
    C.PNEUMONIA: (
        MedicationPlan(Code("2193", "ceftriaxone"), "2 g IV once daily", 0.1, 7.0, 0.6),
        MedicationPlan(Code("18631", "azithromycin"), "500 mg orally once daily", 0.1, 5.0, 0.6),
        MedicationPlan(Code("723", "amoxicillin"), "1 g orally three times daily", 0.1, 7.0, 0.4),
    ),
    C.HEART_FAILURE: (
        MedicationPlan(Code("4603", "furosemide"), "40 mg orally once daily", -20.0, None),
        MedicationPlan(Code("29046", "lisinopril"), "10 mg orally once daily", -20.0, None, 0.7),
        MedicationPlan(Code("20352", "carvedilol"), "12.5 mg orally twice daily", -18.0, None, 0.6),
        MedicationPlan(Code("9997", "spironolactone"), "25 mg orally once daily", -10.0, None, 0.4),
    ),
    C.PLEURAL_EFFUSION: (),
    C.PNEUMOTHORAX: (
        MedicationPlan(Code("161", "acetaminophen"), "1 g orally every 6 hours", 0.05, 5.0, 0.7),
    ),
    C.LUNG_NODULE: (),
    C.LUNG_CANCER: (
        MedicationPlan(Code("40048", "carboplatin"), "AUC 5 IV day 1 of 21-day cycle", 21.0, 84.0, 0.6),
        MedicationPlan(Code("68446", "pemetrexed"), "500 mg/m2 IV day 1 of 21-day cycle", 21.0, 84.0, 0.6),
    ),
    C.RIB_FRACTURE: (
        MedicationPlan(Code("161", "acetaminophen"), "1 g orally every 6 hours", 0.05, 14.0),
        MedicationPlan(Code("5640", "ibuprofen"), "400 mg orally three times daily", 0.05, 10.0, 0.5),
        MedicationPlan(Code("7804", "oxycodone"), "5 mg orally every 6 hours as needed", 0.05, 5.0, 0.4),
    ),
    C.BRAIN_TUMOUR: (
        MedicationPlan(Code("3264", "dexamethasone"), "4 mg orally four times daily", 0.2, 30.0),
        MedicationPlan(Code("114477", "levetiracetam"), "500 mg orally twice daily", 0.2, None, 0.7),
        MedicationPlan(Code("37776", "temozolomide"), "75 mg/m2 orally once daily", 28.0, 42.0, 0.5),
    ),
    C.STROKE: (
        MedicationPlan(Code("8410", "alteplase"), "0.9 mg/kg IV over 60 minutes", 0.02, 0.05, 0.35),
        MedicationPlan(Code("1191", "aspirin"), "300 mg orally once daily", 0.5, None),
        MedicationPlan(Code("83367", "atorvastatin"), "80 mg orally once daily", 1.0, None, 0.8),
        MedicationPlan(Code("32968", "clopidogrel"), "75 mg orally once daily", 1.0, None, 0.3),
    ),
}


@dataclass(frozen=True)
class ProcedurePlan:
    """A procedure a condition brings, performed some days after the first imaging order."""

    code: Code
    after_days: float
    min_severity: float


PROCEDURES: dict[ClinicalCondition, tuple[ProcedurePlan, ...]] = {
    C.PNEUMOTHORAX: (ProcedurePlan(Code("264957007", "Insertion of pleural tube drain"), 0.1, 0.3),),
    C.LUNG_CANCER: (ProcedurePlan(Code("78603008", "Biopsy of lung"), 5.0, 0.0),),
}
