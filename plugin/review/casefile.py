"""Everything the case page and the case report show about one case, gathered in one place.

A :class:`CaseFile` holds the case, the result it stands for, its history, the study's image
series (as kept by the service), the heatmap and where it lies, the similar images the image
archive knows of (each with the matching frame of its case, where its images are kept, for the page
to show beside this one), and the record timeline: drawn from the record snapshot stored
with the result (`plugin.store.Timeline`, the record as it was when the study was scored;
`plugin.review.timeline`), or ``timeline_note`` saying why there is none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fusion.checks.duplicates import PerceptualHashIndex
from fusion.explain import summary
from fusion.result import CrossCheckResult
from plugin.errors import SnapshotUnreadable
from plugin.review.imaging import WINDOW_PRESETS, StudyImages, Window, series_frames
from plugin.review.timeline import TimelineView, timeline_view
from plugin.store import Case, CaseQueue, HistoryEntry, Store, StoredResult

__all__ = [
    "NO_SNAPSHOT",
    "SIMILAR_SHOWN",
    "CaseFile",
    "SeriesView",
    "SimilarImage",
    "build_case_file",
    "default_window",
    "heatmap_data",
]

logger = logging.getLogger(__name__)

#: How many similar images a case file looks up the frames of (the page shows those beside the case's).
SIMILAR_SHOWN = 5

#: What the case page and the report say of a result stored without a record snapshot.
NO_SNAPSHOT = (
    "No record snapshot was kept for this result (it was stored before snapshots were kept, or by a "
    "path that keeps none), so no timeline is drawn: the record items the model weighed are listed above."
)


@dataclass(frozen=True)
class SeriesView:
    """A series the viewer can scroll: its identity, modality, frame count and starting window
    (``None``: from the frame's own percentiles)."""

    series_instance_uid: str
    modality: str
    description: str | None
    frames: int
    window: Window | None
    presets: dict[str, Window]


@dataclass(frozen=True)
class SimilarImage:
    """A study elsewhere in the archive whose image matches this one (the service's index of the
    image archive, or the duplicate findings of the result: a sweep's), and its case when it has
    one; distances None where the finding does not give them. ``sop_instance_uid`` is its matching
    image's, and ``frame`` (series, 0-based position) where that image lies among its case's kept
    frames (None: no case, or its images are not kept here)."""

    study_instance_uid: str
    same_patient: bool
    phash_distance: int | None
    dhash_distance: int | None
    texture_correlation: float | None
    case_id: int | None
    sop_instance_uid: str | None = None
    frame: tuple[str, int] | None = None


@dataclass(frozen=True)
class CaseFile:
    """See the module docstring. ``examined`` is (series, 0-based position) of the frame the model
    examined; ``heatmap`` its heatmap data; ``similar`` None when no index was searched;
    ``timeline`` the record timeline, None with ``timeline_note`` saying why."""

    case: Case
    stored: StoredResult | None
    history: list[HistoryEntry]
    series: list[SeriesView]
    examined: tuple[str, int] | None
    heatmap: dict[str, Any] | None
    heatmap_figure: Path | None
    similar: list[SimilarImage] | None
    timeline: TimelineView | None = None
    timeline_note: str | None = None

    @property
    def result(self) -> CrossCheckResult | None:
        return None if self.stored is None else self.stored.result

    @property
    def summary(self) -> str:
        return "" if self.result is None else summary(self.result)


def default_window(series_modality: str, header: Window | None) -> Window | None:
    """The window a series opens at: its header's, else CT's mediastinum, else None (auto)."""
    if header is not None:
        return header
    if series_modality == "CT":
        return WINDOW_PRESETS["CT"]["mediastinum"]
    return None


def heatmap_data(data_dir: Path, result_id: str) -> dict[str, Any] | None:
    """The heatmap data the engine kept for a result (``heatmaps/<id>.json``), or None."""
    path = Path(data_dir) / "heatmaps" / f"{result_id}.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build_case_file(
    case: Case,
    *,
    store: Store,
    data_dir: Path,
    images: StudyImages,
    hash_index: PerceptualHashIndex | None,
) -> CaseFile:
    """Gather a case's file (blocking: database and disk; call it off the event loop)."""
    queue = CaseQueue(store)
    stored = store.get_result(case.result_id)
    history = queue.history(case.id)
    study = images.study(case.study_instance_uid)
    views: list[SeriesView] = []
    if study is not None:
        for series in images.image_series(study):
            frames = series_frames(series)
            first = frames[0].instance
            header = None
            if first.window_center is not None and first.window_width and first.window_width > 0:
                header = Window(first.window_center, first.window_width)
            modality = series.modality.upper()
            views.append(
                SeriesView(
                    series_instance_uid=series.series_instance_uid,
                    modality=modality,
                    description=series.description,
                    frames=len(frames),
                    window=default_window(modality, header),
                    presets=WINDOW_PRESETS.get(modality, {}),
                )
            )
    heatmap = heatmap_data(data_dir, case.result_id)
    examined = None
    if heatmap is not None and study is not None:
        examined = _position(study, heatmap)
    figure = Path(data_dir) / "heatmaps" / f"{case.result_id}.png"
    similar = None
    if hash_index is not None and study is not None:
        owner = case.patient_id or study.patient.patient_id or "unknown"
        try:
            matches = hash_index.query(study, owner)
        except Exception as exc:  # undecodable pixels: no similar images to show
            logger.warning("similar images not searched (%s)", type(exc).__name__)
            matches = ()
        similar = []
        for m in matches:
            other = queue.case_for_study(m.study_instance_uid)
            similar.append(
                SimilarImage(
                    m.study_instance_uid,
                    m.same_patient,
                    m.phash_distance,
                    m.dhash_distance,
                    m.texture_correlation,
                    None if other is None else other.id,
                    m.sop_instance_uid,
                )
            )
    if stored is not None:  # the duplicates the result found (a sweep's index is not the service's)
        shown = {m.study_instance_uid for m in similar or ()}
        found = [m for m in _duplicates_found(stored.result) if m.study_instance_uid not in shown]
        if found:
            similar = [*(similar or ()), *(_with_case(m, queue) for m in found)]
    if similar:
        similar = [_with_frame(m, images) if n < SIMILAR_SHOWN else m for n, m in enumerate(similar)]
    timeline, timeline_note = _timeline(store, case.result_id, stored)
    return CaseFile(
        case=case,
        stored=stored,
        history=history,
        series=views,
        examined=examined,
        heatmap=heatmap,
        heatmap_figure=figure if figure.is_file() else None,
        similar=similar,
        timeline=timeline,
        timeline_note=timeline_note,
    )


def _timeline(
    store: Store, result_id: str, stored: StoredResult | None
) -> tuple[TimelineView | None, str | None]:
    try:
        snapshot = store.timeline(result_id)
    except SnapshotUnreadable as exc:
        logger.warning("a record snapshot could not be read (%s)", type(exc).__name__)
        return None, f"The record snapshot of this result cannot be read by this version ({exc})."
    if snapshot is None:
        return None, NO_SNAPSHOT
    return timeline_view(snapshot, None if stored is None else stored.result), None


def _position(study: Any, heatmap: dict[str, Any]) -> tuple[str, int] | None:
    for series in study.series:
        if series.series_instance_uid != heatmap.get("series_instance_uid"):
            continue
        for n, ref in enumerate(series_frames(series)):
            if ref.instance.sop_instance_uid == heatmap.get("sop_instance_uid") and ref.frame + 1 == int(
                heatmap.get("frame", 1)
            ):
                return series.series_instance_uid, n
    return None


def _duplicates_found(result: CrossCheckResult) -> list[SimilarImage]:
    """The matches a result's duplicate findings name (`fusion.checks.duplicates.duplicate_findings`
    evidence: each other study's StudyInstanceUID, then its hash distances and texture correlation)."""
    own = result.case.study_instance_uid
    found: list[SimilarImage] = []
    for finding in result.findings:
        if not finding.code.startswith("duplicate."):
            continue
        same = finding.code == "duplicate.same-patient"
        for e in finding.evidence:
            if e.kind == "dicom" and e.reference == "StudyInstanceUID" and e.value != own:
                found.append(SimilarImage(str(e.value), same, None, None, None, None, e.uid))
            elif found and e.reference == "hamming-distance-phash-dhash" and isinstance(e.value, list):
                found[-1] = replace(found[-1], phash_distance=int(e.value[0]), dhash_distance=int(e.value[1]))
            elif found and e.reference == "texture-correlation" and isinstance(e.value, int | float):
                found[-1] = replace(found[-1], texture_correlation=float(e.value))
    return found


def _with_case(match: SimilarImage, queue: CaseQueue) -> SimilarImage:
    other = queue.case_for_study(match.study_instance_uid)
    return match if other is None else replace(match, case_id=other.id)


def _with_frame(match: SimilarImage, images: StudyImages) -> SimilarImage:
    """The match with the position of its matching image among its case's kept frames (the middle
    frame of a multi-frame image, the one its hashes were taken of)."""
    if match.case_id is None or match.sop_instance_uid is None:
        return match
    study = images.study(match.study_instance_uid)  # None: not kept here, or unreadable
    if study is None:
        return match
    for series in study.series:
        positions = [
            n
            for n, ref in enumerate(series_frames(series))
            if ref.instance.sop_instance_uid == match.sop_instance_uid
        ]
        if positions:
            return replace(match, frame=(series.series_instance_uid, positions[len(positions) // 2]))
    return match
