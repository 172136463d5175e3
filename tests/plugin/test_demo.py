"""``crosscheck demo`` end to end on a tiny cohort: table, figures, HTML report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugin.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_prints_figures_and_writes_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--patients", "12", "--seed", "31", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "Detection against the manifest" in printed
    assert re.search(r"false positive rate on clean cases: (\d\.\d{3}|n/a)", printed)
    manifest = (out / "cohort" / "manifest.json").read_text()
    n_cases = manifest.count('"study_instance_uid"')
    html = (out / "report.html").read_text()
    # one table row per case, each with an embedded PNG thumbnail
    assert html.count('src="data:image/png;base64,') == n_cases
    assert "Detection figures" in html
    assert "simulated" in html
    # every flagged case says why in a sentence and links its heatmap, which exists
    flagged = html.count('<span class="flag">')
    assert html.count('<p class="why">') == flagged
    links = re.findall(r'<a href="(heatmaps/[^"]+\.png)">heatmap</a>', html)
    assert len(links) == flagged
    assert all((out / link).is_file() for link in links)
