"""The record timeline as the case page and the report draw it (`plugin.review.timeline`): one chart
per Observation code on a shared time axis, the reference range as a band, values out of range
marked, the study's date as a line, the other entries in date order around the study, what the
model weighed marked; and the ``_timeline`` template's SVG."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, Scores, Severity
from plugin.review.casefile import NO_SNAPSHOT
from plugin.review.routes import templates
from plugin.review.timeline import CHART_HEIGHT, CHART_WIDTH, Tick, TimelineView, relative_days, timeline_view
from plugin.store import Timeline, TimelineEntry

UID = "1.2.826.0.1.3680043.8.498.5"
STUDY = datetime(2024, 5, 10, 9, 30, tzinfo=UTC)
HB = "http://loinc.org|718-7"
HR = "http://loinc.org|8867-4"


def _at(days: float) -> datetime:
    return STUDY + timedelta(days=days)


def _hb(n: int, days: float, value: float) -> TimelineEntry:
    return TimelineEntry(
        "lab",
        f"Observation/hb-{n}",
        "Hemoglobin",
        _at(days),
        code=HB,
        value=value,
        unit="g/dL",
        low=13.5,
        high=17.5,
    )


ENTRIES = (
    _hb(1, -30, 12.0),  # low
    _hb(2, -2, 14.0),
    _hb(3, 1, 19.0),  # high
    TimelineEntry(
        "vital", "Observation/hr-1", "Heart rate", _at(-1), code=HR, value=72, unit="/min", low=60, high=100
    ),
    TimelineEntry(
        "lab", "Observation/txt-1", "Culture", _at(-3), code="http://loinc.org|600-7", value_text="negative"
    ),
    TimelineEntry("condition", "Condition/c-1", "Pneumonia", _at(-40), status="active"),
    TimelineEntry("order", "ServiceRequest/sr-1", "XR Chest AP", _at(-0.5), status="completed"),
    TimelineEntry(
        "report", "DiagnosticReport/dr-1", "XR Chest AP", _at(0.4), detail="Consolidation <b>right</b>"
    ),
    TimelineEntry("procedure", "Procedure/p-1", "Bronchoscopy", None),
)


def _timeline(entries: tuple[TimelineEntry, ...] = ENTRIES) -> Timeline:
    return Timeline(UID, "pat-5", STUDY, entries, sex="male", age_years=61)


def _result() -> CrossCheckResult:
    return CrossCheckResult(
        case=CaseRef("pat-5", UID),
        scores=Scores(0.2, 0.4, 0.8),
        flagged=True,
        threshold=0.5,
        findings=(
            Finding(
                "order.after-study", Severity.WARNING, "late", (Evidence("fhir", "ServiceRequest/sr-1"),)
            ),
        ),
        model=None,
        contributions=(
            {"reference": "Observation/hb-3", "label": "Hemoglobin 19 g/dL (high)", "weight": 0.21},
            {"reference": "Condition/c-1", "label": "Pneumonia", "weight": -0.05},
            {"reference": "Condition/c-1", "label": "Pneumonia", "weight": 0.01},
            {"reference": "Patient/pat-5", "label": "age 61", "weight": 0.02},
        ),
    )


def test_a_chart_per_observation_code_with_bands_and_out_of_range_values() -> None:
    view = timeline_view(_timeline(), _result())
    assert [c.code for c in view.labs] == [HB] and [c.code for c in view.vitals] == [HR]
    hb = view.labs[0]
    assert [d.entry.reference for d in hb.dots] == [
        "Observation/hb-1",
        "Observation/hb-2",
        "Observation/hb-3",
    ]
    assert [d.out for d in hb.dots] == [True, False, True] and hb.out_of_range == 2
    (band,) = hb.bands  # one range for every value: one band across the chart
    assert band.x == 0 and band.width == CHART_WIDTH
    low, normal, high = hb.dots
    assert band.y < normal.y < band.y + band.height  # 14.0 inside the band
    assert high.y < band.y and low.y > band.y + band.height  # 19.0 above it, 12.0 below (SVG y grows down)
    assert all(0 <= d.x <= CHART_WIDTH and 0 <= d.y <= CHART_HEIGHT for d in hb.dots)
    assert low.x < normal.x < high.x
    assert hb.line == " ".join(f"{d.x},{d.y}" for d in hb.dots)
    assert hb.nearest.reference == "Observation/hb-3" and hb.nearest_relative == "1 day after"
    assert hb.ranges == ("13.5 to 17.5",)
    assert (
        "19 g/dL" in high.title
        and "Observation/hb-3" in high.title
        and "reference 13.5 to 17.5" in high.title
    )


def test_every_chart_shares_the_time_axis_and_the_study_line() -> None:
    view = timeline_view(_timeline(), None)
    assert view.axis is not None and view.axis.study_x is not None
    hb, hr = view.labs[0], view.vitals[0]
    assert hb.dots[1].x < view.axis.study_x < hb.dots[2].x  # 2 days before, 1 day after
    assert hr.dots[0].x < view.axis.study_x
    assert hr.dots[0].x == view.axis.x(_at(-1))
    assert view.axis.ticks and all(0 <= t.x <= CHART_WIDTH for t in view.axis.ticks)
    edge, inside, start = (
        Tick(CHART_WIDTH - 4, "2024-06"),
        Tick(CHART_WIDTH / 2, "2024-05"),
        Tick(3, "2024-04"),
    )
    assert (edge.anchor, inside.anchor, start.anchor) == ("end", "middle", "start")  # labels stay inside


def test_changing_ranges_give_a_band_per_value() -> None:
    entries = (
        _hb(1, -10, 14.0),
        TimelineEntry(
            "lab", "Observation/hb-2", "Hemoglobin", _at(-5), code=HB, value=14.0, low=12.0, high=15.5
        ),
    )
    (hb,) = timeline_view(_timeline(entries), None).labs
    assert len(hb.bands) == 2
    first, second = hb.bands
    assert first.x == 0 and first.x + first.width == pytest.approx(second.x)
    assert second.y != first.y  # 15.5 is drawn lower than 17.5


def test_the_other_entries_lie_in_date_order_around_the_study() -> None:
    view = timeline_view(_timeline(), _result())
    order = [r.entry.reference if r.entry else "the study" for r in view.rows]
    assert order == [
        "Condition/c-1",
        "Observation/txt-1",  # a value that cannot be plotted is listed
        "ServiceRequest/sr-1",
        "the study",
        "DiagnosticReport/dr-1",
        "Procedure/p-1",  # undated: last
    ]
    rows = {r.entry.reference: r for r in view.rows if r.entry}
    assert rows["Condition/c-1"].relative == "40 days before" and rows["Condition/c-1"].when.endswith(
        "onwards"
    )
    assert rows["ServiceRequest/sr-1"].relative == "12 hours before" and rows["ServiceRequest/sr-1"].cited
    assert rows["DiagnosticReport/dr-1"].relative == "on the study day"
    assert rows["Procedure/p-1"].when == "undated" and rows["Procedure/p-1"].relative == "—"


def test_what_the_model_weighed_is_marked() -> None:
    view = timeline_view(_timeline(), _result())
    hb = view.labs[0]
    assert hb.weighed and hb.weight == 0.21
    assert [d.weighed for d in hb.dots] == [False, False, True]
    assert not view.vitals[0].weighed
    rows = {r.entry.reference: r for r in view.rows if r.entry}
    assert rows["Condition/c-1"].weight == -0.05  # the largest of its contributions
    assert rows["ServiceRequest/sr-1"].weight is None
    assert view.weighed_missing == ("Patient/pat-5",)
    assert timeline_view(_timeline(), None).labs[0].weight is None


@pytest.mark.parametrize(
    ("days", "words"),
    [(None, "—"), (0.2, "on the study day"), (-0.75, "18 hours before"), (1.0, "1 day after"),
     (-45, "45 days before"), (200, "7 months after"), (-1000, "2.7 years before")],
)  # fmt: skip
def test_relative_days(days: float | None, words: str) -> None:
    assert relative_days(days) == words


@dataclass(frozen=True)
class _Case:
    result_id: str = "result-1"


@dataclass(frozen=True)
class _File:
    """What the template reads of a `CaseFile`."""

    timeline: TimelineView | None
    timeline_note: str | None = None
    case: _Case = field(default_factory=_Case)


def _render(file: _File) -> str:
    return templates().get_template("_timeline.html.j2").render(file=file)


def test_the_template_draws_svg_charts_and_the_event_table() -> None:
    html = _render(_File(timeline_view(_timeline(), _result())))
    assert html.count('<svg class="chart"') == 2  # Hemoglobin, Heart rate
    assert html.count('<svg class="axis"') == 2
    assert len(re.findall(r'<circle class="dot out"', html)) == 2
    assert len(re.findall(r'<circle class="dot"', html)) == 2
    assert html.count('<circle class="weighed"') == 1
    assert html.count('<line class="study"') == 2
    assert html.count('<rect class="band"') == 2
    assert 'data-reference="Observation/hb-3"' in html and "<title>" in html
    assert '<tr class="study-row">' in html and UID in html
    assert re.search(r'<tr class="kind-condition weighed" data-reference="Condition/c-1">', html)
    assert re.search(r'<tr class="kind-order cited" data-reference="ServiceRequest/sr-1">', html)
    assert "Consolidation &lt;b&gt;right&lt;/b&gt;" in html  # record text is escaped
    assert "<script" not in html and "http" not in html
    assert "Patient/pat-5" in html  # weighed, not on the timeline: said so


def test_the_template_says_when_there_is_no_snapshot_or_no_record() -> None:
    html = _render(_File(None, NO_SNAPSHOT))
    assert "No record snapshot was kept for this result" in html and "<svg" not in html
    bare = Timeline(UID, "pat-5", STUDY, has_record=False)
    html = _render(_File(timeline_view(bare, None)))
    assert "scored without a patient record" in html and "<svg" not in html
