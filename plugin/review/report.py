"""Case reports (``crosscheck report``): one self-contained HTML file, or a PDF of it, for a file
or a referral.

Per case: its identifiers, the frame the model examined (rendered at the series' window: its
header's, CT's mediastinum, else the frame's 1st to 99th percentiles) and the same frame with the
tamper heatmap over it, the scores with their threshold and what they mean, the findings with
their evidence, the record items the model weighed, the record timeline (from the snapshot kept
with the result: labs and vital signs against their reference ranges as inline SVG charts,
conditions, orders, reports and the rest around the study), and the disposition history (events
and comments). It is the review page's case page made static: the same `CaseFile`, the same
templates (``_ids``, ``_result``, ``_timeline``, ``_history`` included, ``base`` extended), the
stylesheet inlined and the images as ``data:`` URIs, so the file fetches nothing from anywhere.

A PDF is the same HTML printed by Chromium through Playwright (Debian's ``/usr/bin/chromium``;
no browser is downloaded); without either, `PdfRendererMissing`.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from plugin.errors import CaseNotFound, PdfRendererMissing, ReportError, UsageError
from plugin.review.casefile import CaseFile, build_case_file
from plugin.review.imaging import (
    StudyImages,
    auto_window,
    frame_pixels,
    overlay_png,
    render_png,
    series_frames,
)
from plugin.review.routes import templates
from plugin.store import Actor, ActorKind, AuditAction, CaseQueue, Store

__all__ = ["CHROMIUM", "ReportItem", "html_to_pdf", "render_report", "report_item", "write_report"]

logger = logging.getLogger(__name__)

#: The Chromium that prints PDFs (Debian's package; Playwright never downloads one here).
CHROMIUM = "/usr/bin/chromium"

_STATIC = Path(__file__).parent / "static"

#: What the report adds to the review page's stylesheet: the images side by side, a case a page.
_REPORT_CSS = """
.report-images { display: flex; flex-wrap: wrap; gap: 1rem; }
.report-images figure { margin: 0; max-width: 380px; }
.report-images img { width: 100%; height: auto; background: #000; display: block; }
.report-images figcaption { font-size: .8rem; color: #4a5464; margin-top: .3rem; }
article.case + article.case { break-before: page; border-top: 2px solid #1d2430; margin-top: 2rem; }
@media print { header.top { display: flex; } main { max-width: none; } }
"""


@dataclass(frozen=True)
class ReportItem:
    """A case's part of a report: its `CaseFile`, and its images as ``data:`` URIs (PNG):
    ``frame_png`` the examined frame, ``overlay_png`` the same with the heatmap over it (None
    when there is no heatmap for it); ``caption`` says which frame at which window,
    ``overlay_note`` why there is no overlay."""

    file: CaseFile
    frame_png: str | None
    overlay_png: str | None
    caption: str
    overlay_note: str | None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _composite(frame: bytes, overlay: bytes) -> bytes:
    """The heatmap overlay (RGBA, the frame's size) drawn over the grey frame."""
    base = Image.open(io.BytesIO(frame)).convert("RGBA")
    top = Image.open(io.BytesIO(overlay)).convert("RGBA")
    if top.size != base.size:
        top = top.resize(base.size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    Image.alpha_composite(base, top).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def report_item(file: CaseFile, images: StudyImages) -> ReportItem:
    """Render a case's images for the report (blocking: reads and decodes the kept study)."""
    study = images.study(file.case.study_instance_uid)
    if study is None or not file.series:
        return ReportItem(file, None, None, "", None)
    if file.examined is not None:
        series_uid, position = file.examined
        view = next(v for v in file.series if v.series_instance_uid == series_uid)
    else:
        view = file.series[0]
        position = view.frames // 2
    series = next(s for s in study.series if s.series_instance_uid == view.series_instance_uid)
    pixels = frame_pixels(series_frames(series)[position])
    window = view.window or auto_window(pixels)
    source = "the series' window" if view.window is not None else "from the frame's 1st to 99th percentiles"
    which = "The frame the model examined" if file.examined else "The middle frame"
    frame = render_png(pixels, window)
    caption = (
        f"{which}: slice {position + 1} of {view.frames}, {view.modality} series "
        f"{view.description or view.series_instance_uid}; window centre {window.center:g}, "
        f"width {window.width:g} ({source})."
    )
    overlay = None
    note = None
    if file.heatmap is None:
        note = "No heatmap was kept for this result."
    elif file.examined is None:
        note = "The heatmap's frame is not among the kept images, so no overlay is drawn."
    else:
        overlay = _data_uri(_composite(frame, overlay_png(file.heatmap)))
    return ReportItem(file, _data_uri(frame), overlay, caption, note)


def render_report(items: Sequence[ReportItem], *, written: datetime | None = None) -> str:
    """The report's HTML: the review page's templates, its stylesheet inlined."""
    css = (_STATIC / "review.css").read_text("utf-8") + _REPORT_CSS
    return (
        templates()
        .get_template("report.html.j2")
        .render(items=items, files=[i.file for i in items], css=css, written=written or datetime.now(UTC))
    )


def html_to_pdf(html: str, out: Path) -> None:
    """Print ``html`` to the PDF file ``out`` with Chromium (`CHROMIUM`) driven by Playwright."""
    _check_pdf_renderer()
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page()
                page.set_content(html, wait_until="load")
                page.pdf(path=str(out), format="A4", print_background=True, prefer_css_page_size=True)
            finally:
                browser.close()
    except PlaywrightError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"Chromium could not print the PDF ({first}); write .html instead") from exc


def _missing(why: str) -> str:
    return (
        f"a PDF report needs Playwright (pip install playwright) and Debian's chromium ({CHROMIUM}), "
        f"but {why}: write .html instead"
    )


def write_report(
    case_ids: Sequence[int],
    out: Path,
    *,
    store: Store,
    data_dir: Path,
    actor: Actor | None = None,
) -> Path:
    """Write the report of ``case_ids`` to ``out`` (``.html``/``.htm``, or ``.pdf``) and audit it
    (``case.report``, the case ids only); `CaseNotFound` for an unknown id, before writing."""
    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".html", ".htm", ".pdf"):
        raise UsageError(f"--out {out}: give a .html or .pdf file name")
    if not case_ids:
        raise UsageError("give at least one case id")
    if kind == ".pdf":
        _check_pdf_renderer()
    queue = CaseQueue(store)
    cases = []
    for case_id in dict.fromkeys(case_ids):
        case = queue.case(case_id)
        if case is None:
            raise CaseNotFound(f"there is no case {case_id}: give the ids the review page's queue shows")
        cases.append(case)
    images = StudyImages(Path(data_dir) / "images", capacity=2)
    files = [
        build_case_file(c, store=store, data_dir=Path(data_dir), images=images, hash_index=None)
        for c in cases
    ]
    items = [report_item(f, images) for f in files]
    html = render_report(items)
    partial = out.with_name(f".{out.name}.partial")
    try:
        if kind == ".pdf":
            html_to_pdf(html, partial)
        else:
            partial.write_text(html, "utf-8")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    store.audit(
        AuditAction.CASE_REPORT,
        actor or Actor(ActorKind.SYSTEM, "cli"),
        detail={"cases": [c.id for c in cases]},
    )
    logger.debug("wrote a report of cases %s", [c.id for c in cases])
    return out


def _check_pdf_renderer() -> None:
    """Fail before any work when a PDF cannot be printed here."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise PdfRendererMissing(_missing("Playwright is not installed")) from None
    if not os.access(CHROMIUM, os.X_OK):
        raise PdfRendererMissing(_missing(f"there is no {CHROMIUM}"))
