"""A sweep killed with SIGKILL mid-way and started again loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin.cli import main
from plugin.cohort import load_cohort

Rows = Callable[[Path], list[tuple[str, str, float]]]
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bigger_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep-kill") / "cohort"
    assert (
        main(["simulate", "--out", str(out), "--patients", "24", "--seed", "5", "--workers", "2", "-q"]) == 0
    )
    return out


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return int(con.execute("SELECT count(*) FROM sweep_results").fetchone()[0])
    except sqlite3.Error:  # not created yet, or the schema not yet migrated
        return 0


def _sweep(cohort: Path, data: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "plugin", "sweep", str(cohort), "--data-dir", str(data)]
    return subprocess.Popen(
        [*command, "--workers", "1", "--batch-size", "1", "-q"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill reaches the readers too
    )


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_then_resume_loses_and_duplicates_nothing(
    bigger_cohort: Path, tmp_path: Path, sweep_rows: Rows
) -> None:
    expected = sorted(e.study_instance_uid for e in load_cohort(bigger_cohort).entries)
    db = tmp_path / "crosscheck.db"
    proc = _sweep(bigger_cohort, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while _stored(db) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_at = _stored(db)
    assert 3 <= killed_at < len(expected)

    again = _sweep(bigger_cohort, tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()
    rows = sweep_rows(db)
    assert sorted(r[0] for r in rows) == expected  # every study once: none lost, none twice
    assert len({r[1] for r in rows}) == len(rows)
    with sqlite3.connect(db) as con:
        orphans = con.execute(
            "SELECT count(*) FROM results r LEFT JOIN sweep_results s ON s.result_id = r.id "
            "WHERE s.result_id IS NULL"
        ).fetchone()[0]
    assert orphans == 0  # no result written without its sweep record
