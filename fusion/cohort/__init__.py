"""The simulated cohort: coherent patients as FHIR R4 Bundles and DICOM studies.

`fusion.cohort.draw` draws a ``PatientScenario``; `fusion.cohort.records` writes its
Bundle; `fusion.cohort.images` renders and writes its DICOM; `fusion.cohort.simulate`
puts a whole cohort (and its manipulated cases) on disk with a ``manifest.json``.
"""

from fusion.cohort.scenario import (
    ClinicalCondition,
    ConditionEpisode,
    ImageFinding,
    Manipulation,
    PatientScenario,
    SimSite,
    StudyKind,
    StudyPlan,
)

__all__ = [
    "ClinicalCondition",
    "ConditionEpisode",
    "ImageFinding",
    "Manipulation",
    "PatientScenario",
    "SimSite",
    "StudyKind",
    "StudyPlan",
]
