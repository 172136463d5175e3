"""``crosscheck demo``: the whole flow on a simulated cohort, end to end.

Simulate a cohort (with a seed never used in training), load it through the
connectors, score every case with the bundled model and the rule-based checks,
print a table and the detection figures against the manifest, and write an HTML
report with thumbnails, scores and findings.
"""

from __future__ import annotations

import base64
import io
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from tqdm import tqdm

from connectors.domain import Study
from fusion.evaluate import DetectionFigures, detection_figures
from fusion.explain import summary, write_heatmap_png
from fusion.result import CrossCheckResult
from fusion.scorer import Scorer
from fusion.train import LabelledCase
from plugin.check import build_hash_index
from plugin.cohort import load_cohort

__all__ = ["DemoOutcome", "render_html", "run_demo", "thumbnail_png"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOutcome:
    results: tuple[CrossCheckResult, ...]
    cases: tuple[LabelledCase, ...]
    figures: DetectionFigures
    report: Path
    seconds: float


def thumbnail_png(study: Study, size: int = 128) -> str | None:
    """Base64 PNG of the primary series' middle frame, windowed for display."""
    try:
        series = study.primary_series()
        instances = [i for i in series.instances if i.has_pixels]
        if not instances:
            return None
        frame = instances[len(instances) // 2].pixels()
        if frame.ndim == 3:
            frame = frame[frame.shape[0] // 2]
    except Exception:  # a thumbnail is decoration; the checks report undecodable pixels
        logger.debug("no thumbnail for study %s", study.study_instance_uid, exc_info=True)
        return None
    if series.modality == "CT":
        lo, hi = -1000.0, 400.0
    else:
        lo, hi = (float(v) for v in np.percentile(frame, [0.5, 99.5]))
    scaled = np.clip((frame - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    image = Image.fromarray((scaled * 255).astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render_html(
    cases: list[LabelledCase],
    results: list[CrossCheckResult],
    figures: DetectionFigures,
    title: str,
    subtitle: str,
    heatmaps: dict[str, str] | None = None,
) -> str:
    """The report: figures, then every case with its image, scores, findings and, when flagged,
    the reason in a sentence and a link to its heatmap (``heatmaps``: StudyInstanceUID -> path)."""
    env = Environment(
        loader=PackageLoader("plugin", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    order = sorted(range(len(results)), key=lambda i: -results[i].scores.overall)
    rows = []
    for i in order:
        lc, res = cases[i], results[i]
        rows.append(
            {
                "thumb": thumbnail_png(lc.case.study),
                "patient_id": res.case.patient_id,
                "kind": ", ".join(lc.case.study.modalities),
                "study_uid": res.case.study_instance_uid,
                "truth": lc.manipulation or "clean",
                "overall": _fmt(res.scores.overall),
                "consistency": _fmt(res.scores.consistency),
                "synthetic": _fmt(res.scores.synthetic),
                "flagged": res.flagged,
                "findings": [{"severity": f.severity.value, "message": f.message} for f in res.findings],
                "why": summary(res) if res.flagged else None,
                "heatmap": (heatmaps or {}).get(res.case.study_instance_uid),
            }
        )
    model = results[0].model if results else None
    return env.get_template("demo_report.html.j2").render(
        title=title,
        subtitle=subtitle,
        rows=rows,
        figures=[
            {
                "kind": k.kind,
                "count": k.count,
                "auroc": _fmt(k.auroc),
                "flagged": f"{k.flagged}/{k.count}",
            }
            for k in figures.per_kind
        ],
        fpr=_fmt(figures.false_positive_rate),
        clean_flagged=figures.clean_flagged,
        clean_count=figures.clean_count,
        model_name=model.name if model else "-",
        model_version=model.version if model else "-",
        model_sha=model.sha256 if model else "-",
    )


def _print_table(cases: list[LabelledCase], results: list[CrossCheckResult]) -> None:
    header = (
        f"{'patient':12s} {'modality':8s} {'truth':18s} {'overall':>7s} {'consist':>7s} {'synth':>7s}"
        "  flag  top finding"
    )
    print(header)
    print("-" * len(header))
    for lc, res in sorted(zip(cases, results, strict=True), key=lambda p: -p[1].scores.overall):
        top = res.findings[0].code if res.findings else ""
        print(
            f"{(res.case.patient_id or '-'):12s} {','.join(lc.case.study.modalities):8s} "
            f"{(lc.manipulation or 'clean'):18s} {_fmt(res.scores.overall):>7s} "
            f"{_fmt(res.scores.consistency):>7s} {_fmt(res.scores.synthetic):>7s}  "
            f"{'YES ' if res.flagged else '    '}  {top}"
        )


def _print_figures(figures: DetectionFigures) -> None:
    print()
    print("Detection against the manifest (overall score; AUROC: manipulated of that kind vs clean)")
    print(f"{'manipulation':18s} {'cases':>5s} {'AUROC':>7s} {'flagged':>8s}")
    for k in figures.per_kind:
        print(f"{k.kind:18s} {k.count:5d} {_fmt(k.auroc):>7s} {k.flagged:>4d}/{k.count:<3d}")
    print(
        f"{'all manipulated':18s} {figures.manipulated_count:5d} {_fmt(figures.auroc_all):>7s} "
        f"{figures.manipulated_flagged:>4d}/{figures.manipulated_count:<3d}"
    )
    print(
        f"false positive rate on clean cases: {_fmt(figures.false_positive_rate)} "
        f"({figures.clean_flagged} of {figures.clean_count})"
    )


def run_demo(
    *,
    out: Path,
    patients: int = 60,
    seed: int = 20261125,
    model: Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> int:
    from fusion.cohort.simulate import simulate
    from fusion.model.bundle import default_bundle_path, load_bundle

    start = time.perf_counter()
    cohort_dir = out / "cohort"
    if cohort_dir.exists():
        shutil.rmtree(cohort_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating {patients} patients (seed {seed}) into {cohort_dir} ...")
    simulate(cohort_dir, patients=patients, seed=seed, manipulated_rate=0.35, progress=progress)
    cohort = load_cohort(cohort_dir)
    cases = list(tqdm(cohort.iter_cases(), total=len(cohort), desc="loading", disable=not progress))
    index = build_hash_index(
        [c.case.study for c in cases], {c.case.study_instance_uid: c.case.patient_id for c in cases}
    )
    loaded = load_bundle(model or default_bundle_path(), device=device)
    scorer = Scorer(loaded, site=cohort.site, hash_index=index)
    explained = [
        scorer.explain_many([c.case], batch_size=1)[0]
        for c in tqdm(cases, desc="checking", disable=not progress)
    ]
    results = [result for result, _ in explained]
    heatmaps: dict[str, str] = {}
    for lc, (result, prediction) in zip(cases, explained, strict=True):
        if result.flagged:
            uid = result.case.study_instance_uid
            png = write_heatmap_png(
                lc.case, prediction.heatmap, out / "heatmaps" / f"{uid}.png", config=loaded.config.features
            )
            if png is not None:
                heatmaps[uid] = png.relative_to(out).as_posix()
    figures = detection_figures(results, [c.manipulation for c in cases])
    print()
    _print_table(cases, results)
    _print_figures(figures)
    seconds = time.perf_counter() - start
    html = render_html(
        cases,
        results,
        figures,
        heatmaps=heatmaps,
        title="demo on a simulated cohort",
        subtitle=f"{len(cases)} studies of {patients} simulated patients, seed {seed}; {seconds:.0f} s",
    )
    report = out / "report.html"
    report.write_text(html, "utf-8")
    print(f"\nHTML report: {report}  ({seconds:.1f} s in all)")
    return 0
