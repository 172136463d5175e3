"""Fine-tuning a model bundle on labelled studies: ``fine_tune(parent, labelled, ...) -> FineTuneReport``.

Each labelled study is a :class:`TargetedCase`: the case and a target for each head its label
speaks for (``None``: that head learns nothing from it). The loss is training's own
(`fusion.train`): binary cross-entropy on the consistency logit, on the synthetic logit and, with
half the weight, on the tamper heatmap's maximum; each term only over the examples with a target
for it. A ``genuine`` example (an untouched image with its own record) also gives the
consistency head a negative, its record perturbed, as in training, so that a batch of
confirmed-genuine studies does not teach the head to call everything consistent.

**Replay.** ``replay`` cases of the original training cohort (`LabelledCase`, their targets as in
training) are mixed into every epoch with the labelled ones, so that a few labels move the model
without wrecking what it learnt. Each epoch is one pass over labelled + replay cases, shuffled
(seeded).

**Calibration.** With ``calibration`` cases (held out of the cohort, disjoint from the replay ones)
and at least :data:`MIN_CALIBRATION_CLEAN` clean ones among them, the temperatures and the
threshold are fitted again as training fits them; otherwise the parent's calibration is kept and
the model card says so.

The optimiser is AdamW, fresh (bundles carry no optimiser state), with training's warm-up and
cosine schedule; seeds fixed, so the same inputs give the same weights (up to the CPU's float
reductions, as for training). The new bundle's ``config.json`` holds ``fine_tuned``: the parent
(name, version, sha256), the recipe, the counts, and whatever the caller adds (the labels'
digest). Before and after, each labelled study is scored by the model alone (calibrated, no rule
checks): the report's ``before`` and ``after`` show what the labels did to the studies trained on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from connectors.domain import Case
from fusion.calibrate import Calibration, overall_score
from fusion.errors import TrainingDataError
from fusion.features import CaseFeatures
from fusion.model.bundle import LoadedModel, load_bundle, save_bundle, write_model_card
from fusion.model.factory import resolve_device
from fusion.model.fusion import CrossCheckModel
from fusion.result import ModelInfo
from fusion.scorer import Scorer
from fusion.train import HeadTargets, LabelledCase, _calibrate, _pool, _run_epoch, _Schedule

__all__ = ["MIN_CALIBRATION_CLEAN", "FineTuneReport", "TargetedCase", "fine_tune", "model_card"]

log = logging.getLogger(__name__)

#: Clean calibration cases needed to fit the calibration again (fewer: the parent's is kept).
MIN_CALIBRATION_CLEAN = 20


@dataclass(frozen=True)
class TargetedCase:
    """A labelled study and the target of each head its label speaks for: ``consistency`` (1 the
    image belongs with the record, 0 it does not) and ``synthetic`` (1 the pixels were made or
    altered, 0 they are as acquired); ``None`` where the label says nothing. ``genuine``: the
    label says the image is untouched and belongs with its record (both targets clean).
    ``label`` names what the label said, for the report (``clean``, ``wrong-patient`` ...).
    """

    case: Case
    consistency: float | None
    synthetic: float | None
    genuine: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("consistency", "synthetic"):
            if getattr(self, name) not in (None, 0.0, 1.0):
                raise ValueError(f"{name} must be 0, 1 or None, not {getattr(self, name)!r}")
        if self.consistency is None and self.synthetic is None:
            raise ValueError("a targeted case needs a target for at least one head")
        if self.genuine and (self.consistency != 1.0 or self.synthetic != 0.0):
            raise ValueError("a genuine case is consistent (1) and not synthetic (0)")

    @property
    def consistency_target(self) -> float | None:
        """``consistency``, or ``None`` when the case has no record to be consistent with."""
        return None if self.case.record is None else self.consistency

    @property
    def synthetic_target(self) -> float | None:
        return self.synthetic


@dataclass(frozen=True)
class FineTuneReport:
    """What :func:`fine_tune` made. ``before`` and ``after``: the model-alone overall score of each
    labelled case (in the order given) under the parent and under the new bundle."""

    bundle_path: Path
    sha256: str
    name: str
    version: str
    parent: ModelInfo
    device: str
    epochs: int
    losses: tuple[float, ...]
    n_labelled: int
    n_replay: int
    n_calibration: int
    recalibrated: bool
    calibration: Calibration
    labels: tuple[str, ...]
    before: tuple[float, ...]
    after: tuple[float, ...]
    seconds: float

    def by_label(self) -> dict[str, tuple[int, float, float]]:
        """Per label (``TargetedCase.label``): how many, mean overall before, mean overall after."""
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            groups.setdefault(label, []).append(i)
        return {
            label: (
                len(rows),
                float(np.mean([self.before[i] for i in rows])),
                float(np.mean([self.after[i] for i in rows])),
            )
            for label, rows in sorted(groups.items())
        }


def _overall(loaded: LoadedModel, features: Sequence[CaseFeatures], batch_size: int) -> list[float]:
    """The model-alone overall score of each case (calibrated; no rule checks)."""
    scorer = Scorer(loaded, checks=False)
    out: list[float] = []
    for start in range(0, len(features), batch_size):
        for pred in scorer.predict(features[start : start + batch_size]):
            p_inconsistent = None if pred.p_consistent is None else 1.0 - pred.p_consistent
            out.append(overall_score(p_inconsistent, pred.p_synthetic))
    return out


def _copy(parent: LoadedModel, device: torch.device) -> CrossCheckModel:
    model = CrossCheckModel(parent.config)
    model.load_state_dict(parent.model.state_dict())
    return model.to(device)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (``None``: left alone) for the block, restored after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fine_tune(
    parent: LoadedModel,
    labelled: Sequence[TargetedCase],
    *,
    out: Path,
    version: str,
    replay: Sequence[LabelledCase] = (),
    calibration: Sequence[LabelledCase] = (),
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 5e-4,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str | torch.device | None = None,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    card_notes: Sequence[str] = (),
    progress: bool = True,
    num_threads: int | None = None,
) -> FineTuneReport:
    """Fine-tune ``parent`` (left unchanged) on ``labelled`` with ``replay``, write the bundle to
    ``out`` (see the module docstring) and return what was done. ``name`` defaults to the parent's;
    ``metadata`` goes into ``config.json``'s ``fine_tuned``; ``card_notes`` are lines for the model
    card. ``num_threads`` sets torch's intra-op threads for the run (restored after)."""
    if not labelled:
        raise TrainingDataError("no labelled studies to fine-tune on")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, not {lr}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    examples: list[HeadTargets] = [*labelled, *replay, *calibration]
    cases = [tc.case for tc in labelled] + [lc.case for lc in (*replay, *calibration)]
    n_lab, n_train = len(labelled), len(labelled) + len(replay)
    with _torch_threads(num_threads):
        torch.manual_seed(seed)
        features = [
            parent.preprocess(c) for c in tqdm(cases, desc="features", disable=not progress, leave=False)
        ]
        before = _overall(parent, features[:n_lab], batch_size)
        model = _copy(parent, dev)
        pool = _pool(features, range(n_train))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = _Schedule(epochs, batch_size, math.ceil(n_train / batch_size), lr, seed)
        losses: list[float] = []
        for epoch in range(epochs):
            losses.append(
                _run_epoch(
                    model,
                    opt,
                    parent.preprocess,
                    features,
                    examples,
                    pool,
                    range(n_train),
                    epoch,
                    schedule,
                    dev,
                    progress,
                )
            )
            log.info("fine-tuning epoch %d: loss %.4f", epoch + 1, losses[-1])
        model.eval()
        cal_idx = list(range(n_train, len(examples)))
        recalibrated = sum(examples[i].genuine for i in cal_idx) >= MIN_CALIBRATION_CLEAN
        fitted = (
            _calibrate(
                model,
                parent.preprocess,
                features,
                examples,
                cal_idx,
                pool,
                seed,
                dev,
                parent.calibration.target_fpr,
                batch_size,
            )
            if recalibrated
            else parent.calibration
        )
        recipe = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
        }
        lineage = {
            "parent": asdict(parent.info),
            "labelled": n_lab,
            "replay": len(replay),
            "calibration": {"cases": len(calibration), "refit": recalibrated},
            **recipe,
            **(metadata or {}),
        }
        name = name or parent.name
        sha = save_bundle(out, model, fitted, name=name, version=version, metadata={"fine_tuned": lineage})
        after = _overall(load_bundle(out, device=dev), features[:n_lab], batch_size)
    report = FineTuneReport(
        bundle_path=Path(out),
        sha256=sha,
        name=name,
        version=version,
        parent=parent.info,
        device=str(dev),
        epochs=epochs,
        losses=tuple(losses),
        n_labelled=n_lab,
        n_replay=len(replay),
        n_calibration=len(calibration),
        recalibrated=recalibrated,
        calibration=fitted,
        labels=tuple(tc.label or "labelled" for tc in labelled),
        before=tuple(before),
        after=tuple(after),
        seconds=time.perf_counter() - t0,
    )
    write_model_card(Path(out), model_card(report, card_notes, lr=lr, batch_size=batch_size, seed=seed))
    return report


def model_card(
    report: FineTuneReport, notes: Sequence[str] = (), *, lr: float, batch_size: int, seed: int
) -> str:
    """The fine-tuned bundle's MODEL_CARD.md."""
    parent, cal = report.parent, report.calibration
    calibration = (
        f"refit on {report.n_calibration} held-out cases of the replay cohort"
        if report.recalibrated
        else "the parent's, unchanged (too few held-out clean cases to fit it again): "
        "the false-positive rate at the threshold is not measured again"
    )
    lines = [
        f"# {report.name} {report.version}",
        "",
        f"Fine-tuned from {parent.name} {parent.version} (weights sha256 `{parent.sha256}`) on "
        "labelled studies.",
        "",
        "## Fine-tuning",
        "",
        f"- weights sha256 `{report.sha256}`",
        f"- {report.n_labelled} labelled studies and {report.n_replay} replay cases of the original "
        f"cohort; {report.epochs} epochs, peak learning rate {lr:g}, batch size {batch_size}, seed {seed}, "
        f"on {report.device}; final loss {report.losses[-1]:.4f}",
        *(f"- {note}" for note in notes),
        "",
        "## Calibration",
        "",
        f"- {calibration}",
        f"- temperatures: consistency {cal.consistency_temperature:.3f}, synthetic "
        f"{cal.synthetic_temperature:.3f}; threshold {cal.threshold:.4f} (target false-positive rate "
        f"{cal.target_fpr:.1%})",
        "",
        "## The labelled studies, model alone (mean overall score, parent -> this model)",
        "",
        "These are the studies it was fine-tuned on, not held out: they show that the labels moved the",
        "model, not how well it does on new studies.",
        "",
        "| label | studies | parent | fine-tuned |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {n} | {before:.3f} | {after:.3f} |"
            for label, (n, before, after) in report.by_label().items()
        ),
        "",
        "## Evaluation",
        "",
        "Not run: the parent's figures do not carry over. Measure this model with",
        "`crosscheck evaluate --data <held-out cohort> --model <this bundle>`.",
    ]
    return "\n".join(lines) + "\n"
