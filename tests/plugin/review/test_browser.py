"""The review page end to end in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): log in, find the flagged case, look at its image and overlay, record a disposition,
see it in the history; a wrong password, anonymous access and a stale form are refused."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.plugin.review.conftest import PASSWORD, USER, Flagged, browser_api, refile_flagged

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_api().sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def _shot(element: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB"), dtype=np.int16)


def _log_in(page: Any, url: str, password: str) -> None:
    page.goto(f"{url}/review")
    assert "/review/login" in page.url  # anonymous: sent to log in
    page.fill("input[name=user_name]", USER)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_find_a_case_look_at_it_and_record_a_disposition(page: Any, flagged: Flagged) -> None:
    p = page
    _log_in(p, flagged.url, "wrong password here")
    assert "wrong" in p.locator("[role=alert]").inner_text()
    _log_in(p, flagged.url, PASSWORD)
    p.wait_for_url(f"{flagged.url}/review")
    p.fill("input[name=q]", flagged.patient_id)
    p.click("form.filters button")
    p.click(f"a[href='/review/cases/{flagged.case_id}']")
    p.wait_for_url(f"**/review/cases/{flagged.case_id}")
    p.wait_for_function(
        "document.getElementById('frame').complete && document.getElementById('frame').naturalWidth > 0"
    )
    p.wait_for_function("document.getElementById('overlay').complete")
    stage = p.locator("#stage")
    with_overlay = _shot(stage)
    assert with_overlay.std() > 5, "the image area is blank"
    p.uncheck("#overlay-toggle")
    assert p.locator("#overlay").is_hidden()
    without = _shot(stage)
    assert without.std() > 5, "the image alone is blank"
    changed = np.abs(with_overlay - without).sum(axis=-1) > 30
    assert changed.mean() > 0.01, "toggling the overlay changed no pixels"
    chart = p.locator("#timeline svg.chart").first  # the record timeline, drawn server-side
    chart.scroll_into_view_if_needed()
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 20
    drawn = _shot(chart)
    assert drawn.std() > 5, "the timeline chart is blank"
    assert p.locator("#timeline circle.dot").count() > 0 and p.locator("#timeline tr.study-row").is_visible()
    before = p.locator("#frame").get_attribute("src")
    p.fill("#width", "5")
    p.dispatch_event("#width", "change")
    assert p.locator("#frame").get_attribute("src") != before  # windowing
    stale_page = p.context.new_page()  # the same case open in a second tab, read before the change
    stale_page.goto(f"{flagged.url}/review/cases/{flagged.case_id}")
    p.select_option("select[name=status]", "confirmed-fabricated")
    p.fill("textarea[name=note]", "generated pixels, no such acquisition")
    p.click("form.disposition button")
    history = p.locator("#history").inner_text()
    assert "confirmed-fabricated" in history and "generated pixels, no such acquisition" in history
    assert USER in history
    stale_page.select_option("select[name=status]", "confirmed-genuine")
    stale_page.fill("textarea[name=note]", "fine")
    stale_page.click("form.disposition button")
    assert "changed by someone else" in stale_page.locator("#message").inner_text()
    assert "confirmed-genuine" not in stale_page.locator("#history").inner_text()


def test_a_refiled_image_is_shown_beside_the_original(page: Any, flagged: Flagged, cohort: Path) -> None:
    """In Chromium: the copy's case shows the original's matching frame among its similar images,
    a real image (not blank), and a click on it opens the original's case."""
    copy_case, _ = refile_flagged(flagged, cohort)
    p = page
    _log_in(p, flagged.url, PASSWORD)
    p.wait_for_url(f"{flagged.url}/review")
    p.goto(f"{flagged.url}/review/cases/{copy_case}")
    thumb = p.locator("img.similar").first
    thumb.scroll_into_view_if_needed()
    p.wait_for_function(
        "(() => { const i = document.querySelector('img.similar');"
        " return i && i.complete && i.naturalWidth > 0; })()"
    )
    shot = _shot(thumb)
    assert shot.shape[1] >= 100 and shot.std() > 5, "the similar image is blank"
    thumb.click()
    p.wait_for_url(f"**/review/cases/{flagged.case_id}")
