"""Why a case was flagged, for a clinician in five seconds: a sentence and a heatmap.

`summary` turns a `CrossCheckResult` into one short paragraph: the critical and
warning findings in plain words, the model's view, and the record items that
contradict the image most (labs with their values and whether they are normal,
diagnoses, the order, the report). `write_heatmap_png` overlays the model's
tamper heatmap on the image it looked at, for reports and the review page;
`heatmap_placement` gives the same heatmap as data, with where it lies on which
frame (SOPInstanceUID, frame number, the window examined), so the review page can
draw it as an overlay on the DICOM frame itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from numpy.typing import NDArray

from connectors.domain import Case
from fusion.features import FeatureConfig, central_frame, examined_window
from fusion.result import CrossCheckResult, Severity

__all__ = ["heatmap_placement", "heatmap_site", "summary", "with_probability", "write_heatmap_png"]

_MAX_ITEMS = 3
_REPORT_WORD = "report says "  # the label of a report-word token (fusion.features)


def summary(result: CrossCheckResult) -> str:
    """One short paragraph: verdict, findings worst first, the contradicting record items."""
    s = result.scores
    verdict = (
        f"Flagged for review (score {s.overall:.2f}, threshold {result.threshold:.2f})"
        if result.flagged
        else f"Not flagged (score {s.overall:.2f}, threshold {result.threshold:.2f})"
    )
    parts = [verdict + "."]
    rule = [f for f in result.findings if not f.code.startswith("model.") and f.severity is not Severity.INFO]
    for f in sorted(rule, key=lambda f: f.severity is not Severity.CRITICAL)[:_MAX_ITEMS]:
        parts.append(f.message.rstrip(".") + ".")
    if s.synthetic is not None and s.synthetic >= result.threshold:
        parts.append(f"The image looks generated or edited (probability {s.synthetic:.2f}).")
    if s.consistency is not None and 1.0 - s.consistency >= result.threshold:
        parts.append(f"The image does not fit the record (probability {1.0 - s.consistency:.2f}).")
    against = [str(c["label"]) for c in result.contributions if float(c.get("weight") or 0) > 0]
    if against and (result.flagged or (s.consistency is not None and s.consistency < 0.5)):
        words = [label.removeprefix(_REPORT_WORD) for label in against if label.startswith(_REPORT_WORD)]
        items = [label for label in against if not label.startswith(_REPORT_WORD)][:_MAX_ITEMS]
        if words:
            items.append("the report's words " + ", ".join(words[:_MAX_ITEMS]))
        parts.append("Record items that contradict the image most: " + "; ".join(items) + ".")
    return " ".join(parts)


def write_heatmap_png(
    case: Case,
    heatmap_logits: NDArray[np.float32],
    path: Path,
    *,
    config: FeatureConfig | None = None,
    caption: str | None = None,
) -> Path | None:
    """The image the model looked at, with p(tampered) per region over the window it examined.

    Returns None (and writes nothing) when the case has no decodable pixels.
    """
    config = config or FeatureConfig()
    found = central_frame(case, config)
    if found is None:
        return None
    frame, modality, (top, left) = found
    h, w = frame.shape
    crop = config.forensic_crop
    prob = 1.0 / (1.0 + np.exp(-np.asarray(heatmap_logits, np.float64)))
    cell = crop / prob.shape[0]
    fig, ax = plt.subplots(figsize=(5.2, 5.6 if caption else 5.2), dpi=120)
    ax.imshow(frame, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    extent = (left - 0.5, left + crop - 0.5, top + crop - 0.5, top - 0.5)
    overlay = ax.imshow(
        prob, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.45, extent=extent, interpolation="bilinear"
    )
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), crop, crop, fill=False, ec="white", lw=0.8, ls="--"))
    peak = np.unravel_index(int(np.argmax(prob)), prob.shape)
    ax.add_patch(
        Rectangle(
            (left + peak[1] * cell - 0.5, top + peak[0] * cell - 0.5),
            cell,
            cell,
            fill=False,
            ec="cyan",
            lw=1.5,
        )
    )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02, label="p(tampered) per region")
    ax.set_title(f"{modality} {case.study_instance_uid[-16:]}", fontsize=8)
    if caption:
        fig.text(0.02, 0.01, caption, fontsize=7, wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def heatmap_site(case: Case, *, config: FeatureConfig | None = None) -> dict[str, Any] | None:
    """Where the tamper heatmap of a case lies, as JSON-ready data: the frame the forensic branch
    examined (``series_instance_uid``, ``sop_instance_uid``, 1-based ``frame``, its ``rows`` and
    ``columns``) and the square window of ``size`` pixels at ``top``, ``left``; None when the case
    has no decodable pixels. `heatmap_placement` without the probabilities: what a batch sweep's
    readers note for every study, before the model has said which are flagged."""
    config = config or FeatureConfig()
    found = examined_window(case, config)
    if found is None:
        return None
    instance, number, (rows, columns), (top, left) = found
    series = next(s for s in case.study.series if any(i is instance for i in s.instances))
    return {
        "series_instance_uid": series.series_instance_uid,
        "sop_instance_uid": instance.sop_instance_uid,
        "frame": number,
        "rows": int(rows),
        "columns": int(columns),
        "top": int(top),
        "left": int(left),
        "size": int(config.forensic_crop),
    }


def heatmap_placement(
    case: Case, heatmap_logits: NDArray[np.float32], *, config: FeatureConfig | None = None
) -> dict[str, Any] | None:
    """The tamper heatmap as JSON-ready data: `heatmap_site` with ``probability`` (p(tampered) per
    region, rows of the grid). None when the case has no decodable pixels."""
    site = heatmap_site(case, config=config)
    return None if site is None else with_probability(site, heatmap_logits)


def with_probability(site: dict[str, Any], heatmap_logits: NDArray[np.float32]) -> dict[str, Any]:
    """A `heatmap_site` with the heatmap's ``probability`` grid from the model's logits."""
    prob = 1.0 / (1.0 + np.exp(-np.asarray(heatmap_logits, np.float64)))
    return {**site, "probability": [[round(float(v), 4) for v in row] for row in prob]}
