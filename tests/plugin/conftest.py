"""A small simulated cohort shared by the CLI tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin.cli import main


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "cohort"
    assert (
        main(["simulate", "--out", str(out), "--patients", "8", "--seed", "11", "--workers", "1", "-q"]) == 0
    )
    return out
