"""Sweeps over the shared 8-patient cohort; a plain folder copy of it; a helper to read the database."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def plain_folder(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort without its manifest: Bundles and DICOM found by reading them."""
    out = tmp_path_factory.mktemp("sweep") / "plain"
    shutil.copytree(cohort / "bundles", out / "bundles")
    shutil.copytree(cohort / "dicom", out / "dicom")
    shutil.copy(cohort / "site.json", out / "site.json")
    return out


@pytest.fixture()
def sweep_rows() -> Callable[[Path], list[tuple[str, str, float]]]:
    return _sweep_rows


def _sweep_rows(db: Path) -> list[tuple[str, str, float]]:
    """(StudyInstanceUID, input fingerprint, overall) of every swept result stored."""
    with sqlite3.connect(db) as con:
        return list(
            con.execute(
                "SELECT r.study_instance_uid, s.input_fingerprint, r.score_overall "
                "FROM sweep_results s JOIN results r ON r.id = s.result_id"
            )
        )
