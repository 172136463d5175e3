"""The record timeline of a case page and a case report, drawn from the result's record snapshot.

`timeline_view` turns a stored `plugin.store.Timeline` into what the ``_timeline`` template draws:

- a small chart per laboratory code and per vital sign (:class:`Chart`): each value a dot, the
  reference range a shaded band, values outside it marked, the study's date a dashed vertical
  line, all charts on one time axis (:class:`Axis`) so they line up;
- the other entries (:class:`Row`: conditions with onset and abatement, orders, reports,
  procedures, medications, encounters, ImagingStudy resources, and values that cannot be plotted)
  in date order, with the study itself as a row among them and each entry's days from the study;
- the items the model weighed (the result's ``contributions``, by FHIR reference) and those the
  findings cite as evidence, marked on both.

The charts are inline SVG whose geometry is computed here and written by the template (so every
text is escaped by Jinja's autoescaping): no script, no request, the same in the browser, the
self-contained report and its PDF. Colours are SVG presentation attributes, which a
Content-Security-Policy without ``'unsafe-inline'`` styles leaves alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from fusion.result import CrossCheckResult
from plugin.store.snapshots import EntryKind, Timeline, TimelineEntry, as_utc, days_between

__all__ = [
    "CHART_HEIGHT",
    "CHART_WIDTH",
    "Axis",
    "Band",
    "Chart",
    "Dot",
    "Row",
    "Tick",
    "TimelineView",
    "relative_days",
    "timeline_view",
]

#: A chart's size in SVG user units (CSS pixels at 100%).
CHART_WIDTH = 420
CHART_HEIGHT = 46
_PAD_X = 8.0
_PAD_Y = 6.0
_MAX_TICKS = 7


@dataclass(frozen=True)
class Tick:
    """A date on the time axis: its ``x``, its label, and how the label is anchored (SVG
    ``text-anchor``: ``end`` near the right edge, ``start`` near the left, else ``middle``)."""

    x: float
    label: str

    @property
    def anchor(self) -> str:
        if self.x > CHART_WIDTH - 22:
            return "end"
        return "start" if self.x < 22 else "middle"


@dataclass(frozen=True)
class Axis:
    """The time axis every chart shares: ``start`` to ``end``, the study's ``x`` (None when the
    study has no date), and the ticks."""

    start: datetime
    end: datetime
    study_x: float | None
    ticks: tuple[Tick, ...]

    def x(self, moment: datetime) -> float:
        span = max(days_between(self.start, self.end), 1e-9)
        return round(_PAD_X + days_between(self.start, moment) / span * (CHART_WIDTH - 2 * _PAD_X), 2)


@dataclass(frozen=True)
class Band:
    """A shaded reference range: a rectangle (SVG user units)."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Dot:
    """One value: where it is drawn, its entry, whether it is out of range (None: unknown), whether
    the model weighed it, and its tooltip (``title``)."""

    x: float
    y: float
    entry: TimelineEntry
    out: bool | None
    weighed: bool
    title: str


@dataclass(frozen=True)
class Chart:
    """The values of one Observation code (a lab or a vital sign) over time.

    ``nearest`` is the value nearest the study (``nearest_relative``: when, in words); ``line``
    the polyline through the dots (SVG ``points``, empty for one value); ``ranges`` the distinct
    reference ranges in words; ``weight`` the largest the model gave one of its values (None: it
    weighed none)."""

    kind: EntryKind
    code: str
    label: str
    unit: str | None
    dots: tuple[Dot, ...]
    bands: tuple[Band, ...]
    line: str
    nearest: TimelineEntry
    nearest_relative: str
    ranges: tuple[str, ...]
    weight: float | None

    @property
    def weighed(self) -> bool:
        return self.weight is not None

    @property
    def out_of_range(self) -> int:
        return sum(1 for d in self.dots if d.out)


@dataclass(frozen=True)
class Row:
    """A row of the event list: an entry (None for the study itself), its dates and days from the
    study in words, and how the result names it: ``weight`` the model's (None: not weighed),
    ``cited`` whether a finding cites it as evidence."""

    entry: TimelineEntry | None
    when: str
    relative: str
    weight: float | None
    cited: bool


@dataclass(frozen=True)
class TimelineView:
    """What the case page and the report draw of a result's record snapshot."""

    timeline: Timeline
    axis: Axis | None
    labs: tuple[Chart, ...]
    vitals: tuple[Chart, ...]
    rows: tuple[Row, ...]
    weighed_missing: tuple[str, ...]

    @property
    def width(self) -> int:
        return CHART_WIDTH

    @property
    def height(self) -> int:
        return CHART_HEIGHT

    @property
    def study_label(self) -> str:
        return "date unknown" if self.timeline.study_date is None else _when(self.timeline.study_date)


def timeline_view(timeline: Timeline, result: CrossCheckResult | None) -> TimelineView:
    """The view of ``timeline``, marking what ``result`` weighed and cites (None: nothing)."""
    weights = _weights(result)
    cited = _cited(result)
    measured = [e for e in timeline.entries if e.kind.measured and e.value is not None and e.date is not None]
    axis = _axis(timeline, measured)
    charts = _charts(timeline, measured, axis, weights) if axis is not None else []
    plotted = {d.entry.reference for c in charts for d in c.dots}
    listed = [e for e in timeline.entries if e.reference not in plotted]
    rows = _rows(timeline, listed, weights, cited)
    return TimelineView(
        timeline=timeline,
        axis=axis,
        labs=tuple(c for c in charts if c.kind is EntryKind.LAB),
        vitals=tuple(c for c in charts if c.kind is EntryKind.VITAL),
        rows=tuple(rows),
        weighed_missing=tuple(sorted(r for r in weights if r not in timeline.references)),
    )


def relative_days(days: float | None) -> str:
    """Days from the study in words: ``"on the study day"``, ``"3 days before"``, ``"2 years after"``."""
    if days is None:
        return "—"
    size = abs(days)
    if size < 1:
        return (
            "on the study day" if size < 0.5 else f"{size * 24:.0f} hours {'before' if days < 0 else 'after'}"
        )
    if size < 60:
        amount = f"{size:.0f} day{'' if round(size) == 1 else 's'}"
    elif size < 730:
        amount = f"{size / 30.44:.0f} months"
    else:
        amount = f"{size / 365.25:.1f} years"
    return f"{amount} {'before' if days < 0 else 'after'}"


# ---------------------------------------------------------------------------------- internals


def _weights(result: CrossCheckResult | None) -> dict[str, float]:
    """Per FHIR reference, the contribution of largest magnitude the model gave it."""
    out: dict[str, float] = {}
    for c in () if result is None else result.contributions:
        ref, weight = c.get("reference"), c.get("weight")
        if not isinstance(ref, str) or not isinstance(weight, int | float):
            continue
        if ref not in out or abs(weight) > abs(out[ref]):
            out[ref] = float(weight)
    return out


def _cited(result: CrossCheckResult | None) -> frozenset[str]:
    if result is None:
        return frozenset()
    return frozenset(e.reference for f in result.findings for e in f.evidence)


def _when(moment: datetime) -> str:
    return (
        moment.strftime("%Y-%m-%d %H:%M") if (moment.hour, moment.minute) != (0, 0) else f"{moment:%Y-%m-%d}"
    )


def _axis(timeline: Timeline, measured: Sequence[TimelineEntry]) -> Axis | None:
    moments = [e.date for e in measured if e.date is not None]
    if not moments:
        return None
    if timeline.study_date is not None:
        moments.append(timeline.study_date)
    ordered = sorted(moments, key=lambda m: days_between(moments[0], m))
    start, end = ordered[0], ordered[-1]
    span = days_between(start, end)
    margin = timedelta(days=max(span * 0.04, 1.0))
    start, end = start - margin, end + margin
    axis = Axis(start, end, None, ())
    study_x = None if timeline.study_date is None else axis.x(timeline.study_date)
    ticks = tuple(Tick(axis.x(t), label) for t, label in _ticks(start, end))
    return Axis(start, end, study_x, ticks)


def _ticks(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """Round dates between ``start`` and ``end``: month starts (every 1, 2, 3, 6 or 12 months) or
    days (every 1, 2, 7 or 14), at most ``_MAX_TICKS``."""
    start, end = as_utc(start), as_utc(end)
    first, last = start.date(), end.date()
    span = (last - first).days
    if span > 90:
        for step in (1, 2, 3, 6, 12, 24, 60):
            months = [
                date(y, m, 1)
                for y in range(first.year, last.year + 1)
                for m in range(1, 13)
                if first <= date(y, m, 1) <= last and (y * 12 + m - 1) % step == 0
            ]
            if len(months) <= _MAX_TICKS:
                label = "%Y" if step % 12 == 0 else "%Y-%m"
                return [(_at(d), d.strftime(label)) for d in months]
        return []
    for step in (1, 2, 7, 14, 30):
        days = [first + timedelta(days=n) for n in range(0, span + 1) if (first.toordinal() + n) % step == 0]
        days = [d for d in days if start <= _at(d) <= end]
        if len(days) <= _MAX_TICKS:
            return [(_at(d), d.strftime("%m-%d")) for d in days]
    return []


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _charts(
    timeline: Timeline, measured: Sequence[TimelineEntry], axis: Axis, weights: dict[str, float]
) -> list[Chart]:
    groups: dict[tuple[EntryKind, str], list[TimelineEntry]] = {}
    for e in measured:
        groups.setdefault((e.kind, e.code or e.label), []).append(e)
    charts = [
        _chart(kind, code, entries, timeline, axis, weights) for (kind, code), entries in groups.items()
    ]
    return sorted(charts, key=lambda c: (not c.weighed, c.out_of_range == 0, c.label.lower()))


def _chart(
    kind: EntryKind,
    code: str,
    entries: list[TimelineEntry],
    timeline: Timeline,
    axis: Axis,
    weights: dict[str, float],
) -> Chart:
    values = [e.value for e in entries if e.value is not None]
    bounds = values + [b for e in entries for b in (e.low, e.high) if b is not None]
    lo, hi = min(bounds), max(bounds)
    if hi - lo < 1e-9:
        pad = max(abs(hi) * 0.1, 1.0)
        lo, hi = lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad

    def y(v: float) -> float:
        return round(_PAD_Y + (hi - v) / (hi - lo) * (CHART_HEIGHT - 2 * _PAD_Y), 2)

    dots = []
    for e in entries:
        assert e.value is not None and e.date is not None
        dots.append(Dot(axis.x(e.date), y(e.value), e, e.out_of_range, e.reference in weights, _title(e)))
    first = entries[0]
    nearest = min(entries, key=lambda e: abs(timeline.days_from_study(e.date) or 0.0))
    return Chart(
        kind=kind,
        code=code,
        label=first.label,
        unit=first.unit,
        dots=tuple(dots),
        bands=_bands(dots, y, lo, hi),
        line=" ".join(f"{d.x},{d.y}" for d in dots) if len(dots) > 1 else "",
        nearest=nearest,
        nearest_relative=relative_days(timeline.days_from_study(nearest.date)),
        ranges=tuple(dict.fromkeys(r for e in entries if (r := e.range_label))),
        weight=max((weights[e.reference] for e in entries if e.reference in weights), key=abs, default=None),
    )


def _bands(dots: Sequence[Dot], y: Callable[[float], float], lo: float, hi: float) -> tuple[Band, ...]:
    """The reference range behind the dots: one band across the chart when every value has the
    same range, else a band around each value, reaching halfway to its neighbours."""
    ranged = [
        (d, d.entry.low, d.entry.high) for d in dots if d.entry.low is not None or d.entry.high is not None
    ]
    if not ranged:
        return ()

    def rect(x0: float, x1: float, low: float | None, high: float | None) -> Band:
        top, bottom = y(hi if high is None else high), y(lo if low is None else low)
        return Band(round(x0, 2), top, round(max(x1 - x0, 1.0), 2), round(max(bottom - top, 0.5), 2))

    if len({(low, high) for _, low, high in ranged}) == 1:
        _, low, high = ranged[0]
        return (rect(0.0, float(CHART_WIDTH), low, high),)
    bands = []
    xs = [d.x for d in dots]
    for i, d in enumerate(dots):
        if d.entry.low is None and d.entry.high is None:
            continue
        left = 0.0 if i == 0 else (xs[i - 1] + d.x) / 2
        right = float(CHART_WIDTH) if i == len(dots) - 1 else (d.x + xs[i + 1]) / 2
        bands.append(rect(left, right, d.entry.low, d.entry.high))
    return tuple(bands)


def _title(e: TimelineEntry) -> str:
    parts = [_when(e.date) if e.date is not None else "undated", e.value_label]
    if e.range_label:
        parts.append(f"reference {e.range_label}")
    if e.interpretation:
        parts.append(f"interpretation {e.interpretation}")
    parts.append(e.reference)
    return " · ".join(p for p in parts if p)


def _rows(
    timeline: Timeline, entries: Iterable[TimelineEntry], weights: dict[str, float], cited: frozenset[str]
) -> list[Row]:
    rows = []
    study_placed = timeline.study_date is None
    for e in entries:
        days = timeline.days_from_study(e.date)
        if not study_placed and (days is None or days >= 0):
            rows.append(_study_row(timeline))
            study_placed = True
        when = "undated" if e.date is None else _when(e.date)
        if e.end is not None:
            when += f" to {_when(e.end)}"
        elif (
            e.kind is EntryKind.CONDITION
            and e.date is not None
            and e.status in (None, "active", "recurrence")
        ):
            when += " onwards"
        rows.append(Row(e, when, relative_days(days), weights.get(e.reference), e.reference in cited))
    if not study_placed:
        rows.append(_study_row(timeline))
    return rows


def _study_row(timeline: Timeline) -> Row:
    assert timeline.study_date is not None
    return Row(None, _when(timeline.study_date), "the study", None, False)
