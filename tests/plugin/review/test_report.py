"""``crosscheck report``: a self-contained HTML case report (and its PDF where Chromium and
Playwright are installed) of a case made as the review page's tests make one."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin.cli import main
from plugin.review import report
from plugin.store import Actor, ActorKind, AuditAction, CaseQueue, Store
from tests.plugin.review.conftest import USER, Flagged, browser_api

COMMENT = "pixels look generated; asked the site for the original acquisition"


def _store(data_dir: Path) -> Store:
    return Store.open(f"sqlite:///{data_dir / 'crosscheck.db'}")


def _pngs(html: str) -> list[np.ndarray]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), np.int16) for b in found]


@pytest.mark.slow
def test_html_report_is_self_contained_and_complete(flagged: Flagged, tmp_path: Path) -> None:
    with _store(flagged.data_dir) as store:
        CaseQueue(store).comment(flagged.case_id, USER, COMMENT)
    out = tmp_path / "report.html"
    code = main(["report", str(flagged.case_id), "--out", str(out), "--data-dir", str(flagged.data_dir)])
    assert code == 0
    html = out.read_text("utf-8")
    assert not re.search(r"""(?:src|href|action)\s*=\s*["'](?!data:|#)""", html), "a reference outside"
    assert not re.search(r"url\((?!data:)|@import", html), "a stylesheet reference outside the file"
    assert not re.search(r"https?://", html), "an http(s) address in the report"
    assert "<style>" in html and "<script" not in html
    assert flagged.study_instance_uid in html
    with _store(flagged.data_dir) as store:
        stored = store.get_result(flagged.result_id)
        assert stored is not None
        result = stored.result
        events = store.audit_events(action=AuditAction.CASE_REPORT)
        timeline = store.timeline(flagged.result_id)
    assert f"{result.scores.overall:.3f}" in html and f"{result.threshold:.3f}" in html
    assert COMMENT in html and USER in html  # the history entry
    images = _pngs(html)
    assert len(images) == 2, "the examined frame and the frame with the heatmap over it"
    frame, overlaid = images
    assert frame.std() > 5, "the examined frame is blank"
    assert frame.shape == overlaid.shape
    assert (np.abs(frame - overlaid).sum(axis=-1) > 30).mean() > 0.01, "the overlay changed no pixels"
    assert timeline is not None  # the record timeline, drawn from the snapshot kept with the result
    section = html[html.index('<section id="timeline">') :]
    section = section[: section.index("</section>")]
    assert section.count('<svg class="chart"') == len({e.code for e in timeline.of_kind("lab", "vital")}) > 0
    assert '<line class="study"' in section and '<tr class="study-row">' in section
    for entry in timeline.of_kind("order", "report"):
        assert f'data-reference="{entry.reference}"' in section
    (event,) = events
    assert event.actor == Actor(ActorKind.SYSTEM, "cli")
    assert event.detail == {"cases": [flagged.case_id]}
    assert event.study_instance_uid is None and event.result_id is None  # the case ids only


@pytest.mark.slow
def test_pdf_report(flagged: Flagged, tmp_path: Path) -> None:
    browser_api()
    out = tmp_path / "report.pdf"
    code = main(["report", str(flagged.case_id), "--out", str(out), "--data-dir", str(flagged.data_dir)])
    assert code == 0
    body = out.read_bytes()
    assert body.startswith(b"%PDF")
    assert b"%%EOF" in body[-64:]
    pages = re.findall(rb"/Type\s*/Page(?![A-Za-z])", body)  # page objects (not the /Pages tree)
    assert len(pages) >= 1


def test_unknown_case_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    code = main(["report", "424242", "--out", str(out), "--data-dir", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "424242" in err
    assert not out.exists()


def test_pdf_without_renderer_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "CHROMIUM", str(tmp_path / "no-chromium"))
    out = tmp_path / "report.pdf"
    code = main(["report", "1", "--out", str(out), "--data-dir", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PDF" in err and "Playwright" in err
    assert not out.exists()
