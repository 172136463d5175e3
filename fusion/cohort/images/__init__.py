"""The image side of the simulated cohort: phantoms, findings, acquisition, DICOM files.

Entry points: ``render_study`` (plan -> pixels), the manipulations
``inject_finding``, ``remove_finding``, ``transplant`` and ``synthesize``, and
``write_study`` (pixels -> DICOM files, optionally with a tampered header).
"""

from fusion.cohort.images.dicomwrite import write_study
from fusion.cohort.images.edit import inject_finding, remove_finding
from fusion.cohort.images.families import apply_nuisance, removal_fill, synthetic_generator
from fusion.cohort.images.render import render_study, synthesize, transplant
from fusion.cohort.images.series import RenderedSeries, RenderedStudy

__all__ = [
    "RenderedSeries",
    "RenderedStudy",
    "apply_nuisance",
    "inject_finding",
    "removal_fill",
    "remove_finding",
    "render_study",
    "synthesize",
    "synthetic_generator",
    "transplant",
    "write_study",
]
