"""A sweep on a local Ray cluster gives the results of the local sweep."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugin.store import Store
from plugin.sweep import run_sweep, units_from_folder

try:
    import ray  # noqa: F401  (the test extra installs it)
except ImportError:  # a developer's machine without it skips; CI, which installs it, fails
    if os.environ.get("CI"):
        raise
    pytest.skip("ray is not installed (pip install '.[ray]')", allow_module_level=True)


@pytest.mark.slow
def test_ray_sweep_equals_local_sweep(cohort: Path, tmp_path: Path) -> None:
    found = units_from_folder(cohort)
    scores = {}
    for engine in (None, "auto"):
        with Store.open(tmp_path / f"{engine}.db") as store:
            report = run_sweep(
                found.units, store=store, description="t", site=found.site, ray=engine, progress=False
            )
            assert report.stored == len(found.units) and report.failed == 0
            stored = store.swept_results(report.model.sha256, [u.fingerprint for u in found.units])
            scores[engine] = {
                s.result.case.study_instance_uid: (
                    s.result.scores.overall,
                    s.result.scores.synthetic,
                    s.result.flagged,
                    [f.code for f in s.result.findings],
                )
                for s in stored
            }
    local, ray = scores[None], scores["auto"]
    assert local.keys() == ray.keys() and len(local) == len(found.units)
    for uid, (overall, synthetic, flagged, codes) in local.items():
        assert ray[uid][0] == pytest.approx(overall, abs=1e-4)
        assert ray[uid][1] == pytest.approx(synthetic, abs=1e-4)
        assert ray[uid][2:] == (flagged, codes)
