"""Generator families and nuisances in the simulated cohort: recorded, restricted on request, honest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fusion.cohort.images.families import FAMILIES, available, families_for, regenerate_injection
from fusion.cohort.scenario import Manipulation, StudyKind
from fusion.cohort.simulate import simulate


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_pixel_manipulation_names_an_allowed_family(tmp_path):
    allowed = ("vae", "blend", "membrane")
    m = _manifest(simulate(tmp_path / "c", 14, seed=5, manipulated_rate=0.6, workers=1, families=allowed))
    assert m["families"] == sorted(allowed)
    pixel = [c for c in m["cases"] if c["manipulation"] in {k.value for k in FAMILIES}]
    assert pixel, "the cohort should hold pixel manipulations"
    for c in pixel:
        assert c["family"] in families_for(Manipulation(c["manipulation"])) and c["family"] in allowed
    for c in m["cases"]:
        if c["manipulation"] not in {k.value for k in FAMILIES}:
            assert c["family"] is None


def test_nuisances_touch_pixels_but_not_labels(tmp_path):
    kw = dict(manipulated_rate=0.3, workers=1, families=("blend", "membrane", "vae"))
    plain = _manifest(simulate(tmp_path / "plain", 3, seed=9, nuisance_rate=0.0, **kw))
    noisy = _manifest(simulate(tmp_path / "noisy", 3, seed=9, nuisance_rate=1.0, **kw))
    strip = lambda m: [(c["study_instance_uid"], c["manipulation"], c["family"]) for c in m["cases"]]  # noqa: E731
    assert strip(plain) == strip(noisy)
    assert all(c["nuisance"] is None for c in plain["cases"])
    assert all(c["nuisance"] in ("reencode", "resize", "downsample") for c in noisy["cases"])
    case = plain["cases"][0]
    a = next((tmp_path / "plain" / case["dicom"]).rglob("*.dcm"))
    b = tmp_path / "noisy" / a.relative_to(tmp_path / "plain")
    assert not np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown generator families"):
        simulate(tmp_path / "c", 2, seed=0, families=("stylegan9",))


def test_classical_families_are_always_available_learnt_ones_need_weights():
    for kind in StudyKind:
        assert available("membrane", kind) and available("copy-move", kind) and available("blend", kind)
        assert available("vae", kind)  # shipped


def test_blend_injection_is_the_blend_and_unknown_families_are_refused():
    sentinel = object()
    assert regenerate_injection("blend", sentinel, sentinel, 0) is sentinel  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not inject"):
        regenerate_injection("copy-move", sentinel, sentinel, 0)  # type: ignore[arg-type]
