"""ROC and reliability PNGs from an evaluation report; per-family AUROC."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusion.errors import TrainingDataError
from fusion.evaluate import EvaluationReport, ScorePoint
from fusion.plots import reliability_bins, write_reliability_png, write_roc_png


def _report(points: list[ScorePoint]) -> EvaluationReport:
    return EvaluationReport(
        model="m",
        sha256="0" * 64,
        threshold=0.5,
        counts={},
        auroc_overall={"synthetic": 0.9, "all": 0.9},
        auroc_consistency=None,
        auroc_synthetic=None,
        detection_rate={},
        false_positive_rate=0.05,
        ece_consistency=0.1,
        ece_synthetic=0.02,
        ece_overall=0.05,
        points=tuple(points),
    )


def _points(n: int = 60) -> list[ScorePoint]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        fake = i % 3 == 0
        p = float(np.clip(rng.normal(0.75 if fake else 0.25, 0.15), 0, 1))
        out.append(
            ScorePoint(
                "synthetic" if fake else "clean",
                "gan" if fake else None,
                p,
                0.8,
                p,
                1.0,
                1.0 if fake else 0.0,
            )
        )
    return out


def test_pngs_are_written(tmp_path):
    report = _report(_points())
    for writer, name in ((write_roc_png, "roc.png"), (write_reliability_png, "rel.png")):
        path = writer(report, tmp_path / name)
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 400


def test_roc_needs_both_classes(tmp_path):
    only_clean = [p for p in _points() if p.kind == "clean"]
    with pytest.raises(TrainingDataError):
        write_roc_png(_report(only_clean), tmp_path / "roc.png")


def test_reliability_bins():
    mean_p, freq, count = reliability_bins([0.05, 0.15, 0.95, 0.92], [0, 0, 1, 0], bins=10)
    assert count.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert freq[9] == pytest.approx(0.5) and mean_p[9] == pytest.approx(0.935)
    assert np.isnan(freq[4])


def test_report_json_leaves_the_points_out():
    data = _report(_points()).to_json()
    assert "points" not in data and data["ece_synthetic"] == 0.02
