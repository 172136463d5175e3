"""Cohort folders: which clean studies have their image filed again under another patient."""

from __future__ import annotations

from pathlib import Path

from fusion.evaluate import EvaluationReport
from plugin.cohort import Cohort, CohortEntry


def _entry(uid: str, manipulation: str | None = None, **detail: object) -> CohortEntry:
    return CohortEntry(
        patient_id="p",
        study_instance_uid=uid,
        bundle=Path("b.json"),
        dicom=Path("d"),
        label="manipulated" if manipulation else "clean",
        manipulation=manipulation,
        kind="chest-dx",
        detail=dict(detail),
    )


def test_donors_inside_the_cohort_are_reused_images() -> None:
    cohort = Cohort(
        root=Path("."),
        entries=(
            _entry("1.1"),
            _entry("1.2"),
            _entry("2.1", "wrong-patient", donor_study_instance_uid="1.2", donor_in_cohort=True),
            _entry("2.2", "wrong-patient", donor_study_instance_uid="9.9", donor_in_cohort=False),
        ),
        site=None,
        seed=None,
    )
    assert cohort.reused_images == frozenset({"1.2"})


def test_the_report_gives_the_false_positive_rate_without_reused_images() -> None:
    report = EvaluationReport(
        model="m",
        sha256="0" * 64,
        threshold=0.5,
        counts={"clean": 10},
        auroc_overall={},
        auroc_consistency=None,
        auroc_synthetic=None,
        detection_rate={},
        false_positive_rate=0.2,
        ece_consistency=None,
        ece_synthetic=None,
        ece_overall=None,
        reused_clean=2,
        false_positive_rate_unreused=0.0,
    )
    text = report.to_markdown()
    assert "without the 2 clean studies whose image is also filed under another patient" in text
    assert report.to_json()["false_positive_rate_unreused"] == 0.0
