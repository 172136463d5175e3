"""The algorithm that made a result, as write-back names it in FHIR and in DICOM.

Every resource and report written back says which model made it (name, version and
the sha256 of its weights): a FHIR ``Device``, a DICOM device observer and Algorithm
Identification. A result without a model, or with a sha256 that is not one, cannot
be written back.
"""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

from fusion.result import CrossCheckResult, ModelInfo
from plugin.errors import UnsuitableResult
from plugin.writeback.codes import MANUFACTURER

__all__ = ["algorithm_of", "describe", "device_uid"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def algorithm_of(result: CrossCheckResult) -> ModelInfo:
    """The model that made ``result``; `UnsuitableResult` when it names none or a malformed sha256."""
    model = result.model
    if model is None:
        raise UnsuitableResult(
            f"the result for study {result.case.study_instance_uid} names no model; write-back needs the "
            "model that made it (name, version, sha256): score the study with fusion.scorer.Scorer"
        )
    if not _SHA256.fullmatch(model.sha256):
        raise UnsuitableResult(
            "the result's model sha256 is not 64 lowercase hexadecimal digits; score the study with "
            "a model bundle loaded by fusion.model.bundle.load_bundle"
        )
    if not model.name.strip() or not model.version.strip():
        raise UnsuitableResult("the result's model has an empty name or version; write-back names both")
    return model


def describe(model: ModelInfo) -> str:
    """One line naming the model for people: manufacturer, name, version, the sha256's first digits."""
    return f"{MANUFACTURER} model {model.name} version {model.version} (sha256 {model.sha256[:12]})"


def device_uid(model: ModelInfo) -> str:
    """A DICOM UID for the model as a device observer: the same for the same weights, every time."""
    return str(generate_uid(entropy_srcs=[MANUFACTURER, model.sha256]))
