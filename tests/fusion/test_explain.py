"""Explanations: a short paragraph a clinician reads in seconds, and a heatmap PNG over the image."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from fusion.explain import summary, write_heatmap_png
from fusion.features import FeatureConfig, central_frame
from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, ModelInfo, Scores, Severity


def _model_cases() -> ModuleType:
    name = "tests_fusion_model_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_model_cases.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _result(
    *, flagged: bool, synthetic: float = 0.1, consistency: float = 0.9, findings=(), contributions=()
):
    return CrossCheckResult(
        case=CaseRef("p1", "1.2.3", None),
        scores=Scores(consistency=consistency, synthetic=synthetic, overall=0.9 if flagged else 0.2),
        flagged=flagged,
        threshold=0.8,
        findings=tuple(findings),
        model=ModelInfo("m", "0", "0" * 64),
        timings_ms={},
        contributions=tuple(contributions),
    )


def test_flagged_summary_names_findings_model_view_and_contradicting_items():
    text = summary(
        _result(
            flagged=True,
            synthetic=0.2,
            consistency=0.05,
            findings=[
                Finding(
                    "dates.study-before-order",
                    Severity.CRITICAL,
                    "The study was performed 280 days before the imaging order was written.",
                    (Evidence("fhir", "ServiceRequest/1"),),
                ),
                Finding("model.inconsistent", Severity.CRITICAL, "internal", ()),
            ],
            contributions=[
                {"reference": "Observation/crp", "label": "CRP 2 mg/L (normal)", "weight": 0.4},
                {"reference": "DiagnosticReport/r", "label": "report says 'consolidation'", "weight": 0.3},
                {"reference": "Condition/c", "label": "no such weight", "weight": -0.2},
            ],
        )
    )
    assert text.startswith("Flagged for review (score 0.90, threshold 0.80).")
    assert "280 days before the imaging order" in text
    assert "does not fit the record (probability 0.95)" in text
    assert "CRP 2 mg/L (normal); the report's words 'consolidation'" in text
    assert "no such weight" not in text and "internal" not in text
    assert len(text) < 400


def test_clean_summary_is_one_sentence():
    assert summary(_result(flagged=False)) == "Not flagged (score 0.20, threshold 0.80)."


def test_heatmap_png_over_the_examined_window(tmp_path):
    case = _model_cases().make_case(3, modality="CT", lesion=True, size=40)
    config = FeatureConfig()
    frame, modality, (top, left) = central_frame(case, config)
    assert modality == "CT" and frame.min() >= 0.0 and frame.max() <= 1.0
    assert 0 <= top and 0 <= left
    heat = np.full((16, 16), -4.0, np.float32)
    heat[3, 12] = 4.0
    path = write_heatmap_png(case, heat, tmp_path / "h.png", config=config, caption="why it was flagged")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_no_png_without_pixels(tmp_path):
    case = _model_cases().make_case(8, undecodable=True, size=40)
    assert write_heatmap_png(case, np.zeros((16, 16), np.float32), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
