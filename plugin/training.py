"""``crosscheck train`` and ``crosscheck evaluate``: cohort folders in, bundles and figures out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from fusion.errors import TrainingDataError
from fusion.evaluate import EvaluationReport, evaluate
from fusion.model.bundle import LoadedModel, default_bundle_path, load_bundle
from fusion.scorer import Scorer
from fusion.train import LabelledCase, train
from plugin.check import build_hash_index
from plugin.cohort import Cohort, load_cohort

__all__ = ["evaluate_on_cohort", "load_labelled", "run_evaluate", "run_train"]

logger = logging.getLogger(__name__)


def load_labelled(cohort: Cohort, *, progress: bool, desc: str = "loading") -> list[LabelledCase]:
    cases = list(tqdm(cohort.iter_cases(), total=len(cohort), desc=desc, disable=not progress))
    if not cases:
        raise TrainingDataError(f"{cohort.root}: no cases")
    return cases


def evaluate_on_cohort(loaded: LoadedModel, cohort: Cohort, cases: list[LabelledCase]) -> EvaluationReport:
    """Score every case as `crosscheck check` would (model + rule checks) and compute the figures."""
    index = build_hash_index(
        [lc.case.study for lc in cases], {lc.case.study_instance_uid: lc.case.patient_id for lc in cases}
    )
    scorer = Scorer(loaded, site=cohort.site, hash_index=index)
    return evaluate(scorer, cases)


def run_train(
    *,
    data: Path,
    out: Path,
    config_name: str = "small",
    epochs: int = 12,
    batch_size: int = 32,
    device: str | None = None,
    seed: int = 0,
    resume: bool = False,
    eval_data: Path | None = None,
    progress: bool = True,
    work: Path | None = None,
    exclude_families: tuple[str, ...] = (),
    version: str = "0.1.0",
) -> int:
    if epochs < 1:
        raise TrainingDataError("--epochs must be at least 1")
    cohort = load_cohort(data)
    cases = load_labelled(cohort, progress=progress)
    if exclude_families:
        kept = [lc for lc in cases if lc.family not in exclude_families]
        if len(kept) == len(cases):
            raise TrainingDataError(
                f"--exclude-family {','.join(exclude_families)}: no case of {data} was made by that family"
            )
        print(f"left out {len(cases) - len(kept)} cases made by {', '.join(exclude_families)}")
        cases = kept
    work = work or out.with_name(out.name + "-work")
    report = train(
        cases,
        config_name,
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        seed=seed,
        out=work,
        resume=resume,
        progress=progress,
        bundle_dir=out,
        num_threads=1 if device in (None, "cpu") else None,
        version=version,
    )
    print(
        f"trained {report.config} for {report.epochs} epochs on {report.n_train} cases "
        f"({report.seconds_training:.0f} s on {report.device}); "
        f"bundle {report.bundle_path} sha256 {report.sha256}"
    )
    if report.evaluation is not None:
        print("\nOn the held-out split of --data (model alone):")
        print(report.evaluation.to_markdown())
    if eval_data is not None:
        held_out = load_cohort(eval_data)
        held_cases = load_labelled(held_out, progress=progress, desc="loading held-out")
        loaded = load_bundle(out, device=device)
        ev = evaluate_on_cohort(loaded, held_out, held_cases)
        card = out / "MODEL_CARD.md"
        seed_text = f", seed {held_out.seed}" if held_out.seed is not None else ""
        card.write_text(
            card.read_text("utf-8")
            + f"\n\n## Evaluation on a held-out simulated cohort ({len(held_cases)} studies{seed_text}), "
            "model and rule-based checks together\n\n"
            + "Command: `crosscheck evaluate --data <held-out cohort>`\n\n"
            + ev.to_markdown()
            + "\n",
            "utf-8",
        )
        (out / "evaluation.json").write_text(ev.dumps(), "utf-8")
        _write_plots(ev, out, card)
        print(f"\nOn the held-out cohort {eval_data} (model + checks):")
        print(ev.to_markdown())
    return 0


def run_evaluate(
    *,
    data: Path,
    model: Path | None = None,
    device: str | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> int:
    cohort = load_cohort(data)
    cases = load_labelled(cohort, progress=progress)
    loaded = load_bundle(model or default_bundle_path(), device=device)
    report = evaluate_on_cohort(loaded, cohort, cases)
    print(report.to_markdown())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(report.to_json(), indent=2), "utf-8")
        (out / "evaluation.md").write_text(report.to_markdown() + "\n", "utf-8")
        _write_plots(report, out, out / "evaluation.md")
        print(f"\nwrote {out / 'evaluation.json'}, {out / 'evaluation.md'}, roc.png and reliability.png")
    return 0


def _write_plots(report: EvaluationReport, folder: Path, markdown: Path) -> None:
    """ROC and reliability PNGs beside ``markdown``, which gets links to them."""
    from fusion.plots import write_reliability_png, write_roc_png

    write_roc_png(report, folder / "roc.png")
    write_reliability_png(report, folder / "reliability.png")
    markdown.write_text(
        markdown.read_text("utf-8").rstrip("\n")
        + "\n\n![ROC curves](roc.png)\n\n![Reliability diagrams](reliability.png)\n",
        "utf-8",
    )
