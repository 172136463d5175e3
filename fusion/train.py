"""Training the fusion model: ``train(cases, config, ...) -> TrainReport``.

Targets:

- **consistency**, mostly self-supervised. Every clean case with a record is a
  positive (its true image-record pair). For each one a negative is made on
  the fly by perturbing the record *tokens* (fast, no re-extraction):
  ``wrong-patient`` (another patient's record of the same modality),
  ``clinical-swap`` (own demographics, the clinical tokens of a patient with
  different conditions), ``finding-removed-from-record`` (conditions, report,
  order reasons removed and abnormal labs normalised: the image shows more than
  the record), ``labs-shifted`` (pathological labs for a condition the image does
  not show). Labelled manipulated cases add real ones: ``wrong-patient``,
  ``finding-injected`` and ``finding-removed`` are inconsistent, ``header-*``
  are consistent image-wise; ``synthetic`` is left out of this loss.
- **synthetic**: 1 for pixel-level tampering (``synthetic``, ``finding-injected``,
  ``finding-removed``), else 0; the max over the tamper heatmap gets the same
  target (multiple-instance learning), so the heatmap points at tampered regions.

Loss = sum of BCEs; AdamW with cosine decay; seeds fixed; bf16 autocast on
CUDA. A checkpoint is written after each epoch (``out/checkpoint.pt``) and
``resume=True`` continues from it. Then the held-out calibration split fits
temperatures and the threshold (`fusion.calibrate`), the bundle is saved
(``out/bundle`` unless ``bundle_dir``), reloaded, evaluated on the test split
(`fusion.evaluate`) and its MODEL_CARD.md written with the figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from tqdm.auto import tqdm

from connectors.domain import Case
from fusion.calibrate import Calibration, fit_calibration
from fusion.errors import TrainingDataError
from fusion.evaluate import EvaluationReport, evaluate
from fusion.features import CaseFeatures, TokenKind
from fusion.model.bundle import load_bundle, save_bundle, write_model_card
from fusion.model.config import FusionConfig, named_config
from fusion.model.factory import Preprocess, create_model, resolve_device
from fusion.model.fusion import CrossCheckModel

__all__ = [  # constants (PIXEL_MANIPULATIONS ...) stay importable but unlisted: ruff and sorted() differ
    "HeadTargets",
    "LabelledCase",
    "TrainReport",
    "learning_rate",
    "model_card",
    "perturb_record",
    "train",
]

log = logging.getLogger(__name__)

PIXEL_MANIPULATIONS = frozenset({"synthetic", "finding-injected", "finding-removed"})
INCONSISTENT_MANIPULATIONS = frozenset({"wrong-patient", "finding-injected", "finding-removed"})
_TOKEN_FIELDS = ("token_kind", "token_code", "token_value", "token_time", "token_present")


class HeadTargets(Protocol):
    """What the loss needs of a training example besides its features: the target of each head
    (``None``: that head learns nothing from it), and whether it is a ``genuine`` true image-record
    pair, whose perturbed records are consistency negatives and which counts as clean when the
    threshold is set. `LabelledCase` is one; `fusion.finetune.TargetedCase` another."""

    @property
    def consistency_target(self) -> float | None: ...

    @property
    def synthetic_target(self) -> float | None: ...

    @property
    def genuine(self) -> bool: ...


@dataclass(frozen=True)
class LabelledCase:
    """A case with what was done to it (``manipulation`` None for clean cases) and, for pixel
    manipulations, by which generator ``family``."""

    case: Case
    manipulation: str | None
    label: Literal["clean", "manipulated"]
    family: str | None = None  # how a pixel manipulation was made (vae, gan, diffusion, copy-move ...)
    #: a clean case whose image a wrong-patient case also files under another patient
    image_reused: bool = False

    def __post_init__(self) -> None:
        if self.label not in ("clean", "manipulated"):
            raise ValueError(f"label must be 'clean' or 'manipulated', not {self.label!r}")
        if (self.label == "clean") != (self.manipulation is None):
            raise ValueError("a clean case has no manipulation, and a manipulated case names one")

    @property
    def consistency_target(self) -> float | None:
        """1 consistent, 0 inconsistent, None unknown (synthetic) or no record."""
        if self.case.record is None or self.manipulation == "synthetic":
            return None
        return 0.0 if self.manipulation in INCONSISTENT_MANIPULATIONS else 1.0

    @property
    def synthetic_target(self) -> float:
        return 1.0 if self.manipulation in PIXEL_MANIPULATIONS else 0.0

    @property
    def genuine(self) -> bool:
        """A clean case: its image with its own record."""
        return self.label == "clean"


@dataclass(frozen=True)
class TrainReport:
    bundle_path: Path
    sha256: str
    config: str
    device: str
    start_epoch: int  # 0 unless resumed
    epochs: int
    losses: tuple[float, ...]  # mean training loss per epoch (all epochs, resumed ones included)
    seconds_features: float
    seconds_training: float
    n_train: int
    n_calibration: int
    n_test: int
    calibration: Calibration
    evaluation: EvaluationReport | None = None
    notes: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- data


def _cache_key(lc: LabelledCase, config: FusionConfig) -> str:
    text = json.dumps(
        [lc.case.study_instance_uid, lc.case.patient_id, lc.manipulation, config.features.to_json()],
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()


def _extract_all(
    cases: Sequence[LabelledCase],
    preprocess: Preprocess,
    config: FusionConfig,
    cache: Path | None,
    progress: bool,
) -> list[CaseFeatures]:
    out = []
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    for lc in tqdm(cases, desc="features", disable=not progress, leave=False):
        path = cache / f"{_cache_key(lc, config)}.npz" if cache is not None else None
        if path is not None and path.is_file():
            out.append(CaseFeatures.load_npz(path))
            continue
        feats = preprocess(lc.case)
        if path is not None:
            feats.save_npz(path)
        out.append(feats)
    return out


def _split(cases: Sequence[LabelledCase], seed: int) -> tuple[list[int], list[int], list[int]]:
    """70 / 15 / 15 by patient (so one patient's studies stay together); tiny sets reuse training data."""
    n = len(cases)
    if n < 20:
        everything = list(range(n))
        return everything, everything, everything
    train: list[int] = []
    cal: list[int] = []
    test: list[int] = []
    for i, lc in enumerate(cases):
        pid = lc.case.patient_id or lc.case.study_instance_uid
        u = (
            int.from_bytes(hashlib.blake2b(f"{seed}|{pid}".encode(), digest_size=8).digest(), "little")
            / 2**64
        )
        (train if u < 0.7 else cal if u < 0.85 else test).append(i)
    for part in (cal, test):
        if not part:
            part.append(train.pop())
    return train, cal, test


@dataclass
class _Pool:
    """Per-case facts the perturbations need, over the whole feature list."""

    modality: NDArray[np.int64]
    signature: NDArray[np.int64]  # hash of the active condition codes
    has_condition: NDArray[np.bool_]
    by_modality: dict[int, NDArray[np.int64]]


def _pool(features: Sequence[CaseFeatures], indices: Sequence[int]) -> _Pool:
    modality = np.array([int(np.argmax(f.modality)) for f in features], np.int64)
    sig = np.zeros(len(features), np.int64)
    has = np.zeros(len(features), bool)
    for i, f in enumerate(features):
        cond = (f.token_kind == TokenKind.CONDITION) & (f.token_present > 0.5) & f.token_mask
        codes = sorted(int(c) for c in f.token_code[cond])
        has[i] = bool(codes)
        sig[i] = hash(tuple(codes)) & 0x7FFFFFFF
    idx = np.asarray(indices, np.int64)
    by_mod = {int(m): idx[modality[idx] == m] for m in np.unique(modality[idx])} if idx.size else {}
    return _Pool(modality, sig, has, by_mod)


def _tokens(f: CaseFeatures) -> dict[str, NDArray[Any]]:
    return {k: getattr(f, k).copy() for k in (*_TOKEN_FIELDS, "token_mask")}


def _repack(tok: dict[str, NDArray[Any]], keep: NDArray[np.bool_], T: int) -> dict[str, NDArray[Any]]:
    out = {}
    sel = keep & tok["token_mask"]
    n = int(sel.sum())
    for k in _TOKEN_FIELDS:
        arr = np.zeros(T, tok[k].dtype)
        arr[: min(n, T)] = tok[k][sel][:T]
        out[k] = arr
    mask = np.zeros(T, bool)
    mask[: min(n, T)] = True
    out["token_mask"] = mask
    return out


def _concat(
    a: dict[str, NDArray[Any]],
    keep_a: NDArray[np.bool_],
    b: dict[str, NDArray[Any]],
    keep_b: NDArray[np.bool_],
    T: int,
) -> dict[str, NDArray[Any]]:
    joined = {
        k: np.concatenate([a[k][keep_a & a["token_mask"]], b[k][keep_b & b["token_mask"]]])
        for k in _TOKEN_FIELDS
    }
    joined["token_mask"] = np.ones(len(joined["token_kind"]), bool)
    return _repack(joined, np.ones(len(joined["token_kind"]), bool), T)


_IDENTITY_KINDS = (TokenKind.STUDY, TokenKind.DEMOGRAPHICS)


def perturb_record(
    i: int, features: Sequence[CaseFeatures], pool: _Pool, rng: np.random.Generator
) -> tuple[str, dict[str, NDArray[Any]]] | None:
    """A record for case ``i``'s image that does not fit it: ``(perturbation name, tokens)``."""
    f = features[i]
    T = f.token_kind.shape[0]
    tok = _tokens(f)
    same = pool.by_modality.get(int(pool.modality[i]), np.empty(0, np.int64))
    donors = same[same != i]
    differing = donors[pool.signature[donors] != pool.signature[i]] if donors.size else donors
    labs = np.isin(tok["token_kind"], (TokenKind.LAB,)) & tok["token_mask"]
    options: list[str] = []
    if donors.size:
        options.append("wrong-patient")
    if differing.size:
        options += ["clinical-swap", "clinical-swap"]
    if pool.has_condition[i]:
        options += ["finding-removed-from-record"] * 2
    elif labs.any():
        options.append("labs-shifted")
    if not options:
        return None
    choice = options[int(rng.integers(len(options)))]
    if choice == "wrong-patient":
        return choice, _tokens(features[int(rng.choice(donors))])
    identity = np.isin(tok["token_kind"], _IDENTITY_KINDS)
    if choice == "clinical-swap":
        d = _tokens(features[int(rng.choice(differing))])
        return choice, _concat(tok, identity, d, ~np.isin(d["token_kind"], _IDENTITY_KINDS), T)
    if choice == "finding-removed-from-record":
        kind = tok["token_kind"]
        drop = (
            (kind == TokenKind.CONDITION)
            | (kind == TokenKind.REPORT)
            | (kind == TokenKind.REPORT_WORD)
            | ((kind == TokenKind.ORDER) & (tok["token_value"] > 0.5))
        )
        abnormal = labs & ((tok["token_value"] < 0) | (tok["token_value"] > 1))
        tok["token_value"][abnormal] = rng.uniform(0.2, 0.8, int(abnormal.sum())).astype(np.float32)
        return choice, _repack(tok, ~drop, T)
    # labs-shifted: some labs become pathological without any finding to explain them
    where = np.flatnonzero(labs)
    chosen = rng.choice(where, size=max(1, where.size // 2), replace=False)
    tok["token_value"][chosen] = rng.uniform(1.5, 4.0, chosen.size).astype(np.float32)
    return choice, tok


def _drop_report(tok: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    T = tok["token_kind"].shape[0]
    keep = ~np.isin(tok["token_kind"], (TokenKind.REPORT, TokenKind.REPORT_WORD))
    return _repack(tok, keep, T)


def _stack_tokens(rows: Sequence[dict[str, NDArray[Any]]], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(np.stack([r[k] for r in rows])).to(device) for k in (*_TOKEN_FIELDS, "token_mask")
    }


# ----------------------------------------------------------------------------- loop


def _consistency_logits(
    model: CrossCheckModel,
    tokens: dict[str, torch.Tensor],
    image_tokens: torch.Tensor,
    image_pooled: torch.Tensor,
) -> torch.Tensor:
    mask = tokens["token_mask"]
    rec = model.encode_record(
        tokens["token_kind"],
        tokens["token_code"],
        tokens["token_value"],
        tokens["token_time"],
        tokens["token_present"],
        mask,
    )
    fused, _ = model.fuse(rec, mask, image_tokens)
    return model.consistency_logit(fused, mask, image_pooled)[0]


def _batch_loss(
    model: CrossCheckModel,
    preprocess: Preprocess,
    idx: Sequence[int],
    features: Sequence[CaseFeatures],
    labels: Sequence[HeadTargets],
    pool: _Pool,
    rng: np.random.Generator,
    device: torch.device,
    *,
    augment: bool,
) -> tuple[torch.Tensor, dict[str, Any]]:
    feats = [features[i] for i in idx]
    batch = preprocess.collate(feats, device)
    pos_tokens, pos_target, pos_rows = [], [], []
    neg_tokens, neg_rows = [], []
    for row, i in enumerate(idx):
        target = labels[i].consistency_target
        if target is None:
            continue
        tok = _tokens(features[i])
        if augment and target == 1.0 and rng.random() < 0.1:
            tok = _drop_report(tok)
        pos_tokens.append(tok)
        pos_target.append(target)
        pos_rows.append(row)
        if labels[i].genuine:
            made = perturb_record(i, features, pool, rng)
            if made is not None:
                neg_tokens.append(made[1])
                neg_rows.append(row)
    image_tokens, image_pooled = model.encode_image(batch["image"], batch["modality"])
    forensic, heatmap = model.encode_forensic(batch["forensic"])
    syn_logit = model.synthetic_logit(forensic, image_pooled)
    heat_max = heatmap.flatten(1).max(dim=1).values
    syn_targets = [labels[i].synthetic_target for i in idx]
    syn_rows = [row for row, t in enumerate(syn_targets) if t is not None]
    if len(syn_rows) < len(idx):  # examples whose label says nothing about the pixels
        keep = torch.tensor(syn_rows, dtype=torch.long, device=device)
        syn_logit, heat_max = syn_logit[keep], heat_max[keep]
    syn_target = torch.tensor([t for t in syn_targets if t is not None], device=device)
    if syn_rows:
        loss = F.binary_cross_entropy_with_logits(syn_logit.float(), syn_target)
        loss = loss + 0.5 * F.binary_cross_entropy_with_logits(heat_max.float(), syn_target)
    else:  # a zero that keeps the graph
        loss = syn_logit.float().sum() * 0.0
    logits, targets = [], []
    for rows, toks, tgt in (
        (pos_rows, pos_tokens, pos_target),
        (neg_rows, neg_tokens, [0.0] * len(neg_rows)),
    ):
        if rows:
            r = torch.tensor(rows, device=device)
            logits.append(
                _consistency_logits(model, _stack_tokens(toks, device), image_tokens[r], image_pooled[r])
            )
            targets.append(torch.tensor(tgt, device=device))
    if logits:
        loss = loss + F.binary_cross_entropy_with_logits(torch.cat(logits).float(), torch.cat(targets))
    return loss, {"n_pos": len(pos_rows), "n_neg": len(neg_rows), "n_synthetic": len(syn_rows)}


def learning_rate(step: int, total_steps: int, peak: float) -> float:
    """Linear warm-up over the first 15 % of steps, then cosine decay to 4 % of ``peak``.

    A pure function of the step, so a resumed run follows the same schedule.
    """
    warm = max(1, int(0.15 * total_steps))
    if step < warm:
        return peak * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return peak * (0.04 + 0.96 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class _Schedule:
    epochs: int
    batch_size: int
    steps_per_epoch: int
    lr: float  # the peak of `learning_rate`
    seed: int


def _run_epoch(
    model: CrossCheckModel,
    opt: torch.optim.Optimizer,
    preprocess: Preprocess,
    features: Sequence[CaseFeatures],
    labels: Sequence[HeadTargets],
    pool: _Pool,
    train_idx: Sequence[int],
    epoch: int,
    schedule: _Schedule,
    device: torch.device,
    progress: bool,
) -> float:
    """One pass over ``train_idx`` in a seeded order (`learning_rate` per step); the mean loss."""
    model.train()
    rng = np.random.default_rng([schedule.seed, epoch])
    order = rng.permutation(np.asarray(train_idx))
    total_steps = schedule.epochs * schedule.steps_per_epoch
    batch_size = schedule.batch_size
    total, count = 0.0, 0
    bar = tqdm(
        range(0, len(order), batch_size),
        desc=f"epoch {epoch + 1}/{schedule.epochs}",
        disable=not progress,
        leave=False,
    )
    for start in bar:
        idx = [int(i) for i in order[start : start + batch_size]]
        step = epoch * schedule.steps_per_epoch + start // batch_size
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, total_steps, schedule.lr)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = _batch_loss(model, preprocess, idx, features, labels, pool, rng, device, augment=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(count, 1)


def _checkpoint_state(
    model: CrossCheckModel,
    opt: torch.optim.Optimizer,
    epoch: int,
    losses: list[float],
    seed: int,
    n_cases: int,
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "losses": losses,
        "config": model.config.to_json(),
        "seed": seed,
        "n_cases": n_cases,
        "torch_rng": torch.get_rng_state(),
    }


def train(
    cases: Sequence[LabelledCase],
    config: FusionConfig | str = "small",
    *,
    epochs: int = 12,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    seed: int = 0,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    target_fpr: float = 0.01,
    cache_on_disk: bool = False,
    bundle_dir: Path | None = None,
    name: str | None = None,
    version: str = "0.1.0",
    num_threads: int | None = None,
) -> TrainReport:
    """Train, calibrate, save and evaluate a bundle (see the module docstring).

    ``num_threads`` sets torch's intra-op threads for the run (restored after):
    on a small shared CPU machine 1 thread is often faster than oversubscribing.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(
            cases,
            config,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            seed=seed,
            out=out,
            resume=resume,
            progress=progress,
            lr=lr,
            weight_decay=weight_decay,
            target_fpr=target_fpr,
            cache_on_disk=cache_on_disk,
            bundle_dir=bundle_dir,
            name=name,
            version=version,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    cases: Sequence[LabelledCase],
    config: FusionConfig | str,
    *,
    epochs: int,
    batch_size: int,
    device: str | torch.device | None,
    seed: int,
    out: Path,
    resume: bool,
    progress: bool,
    lr: float,
    weight_decay: float,
    target_fpr: float,
    cache_on_disk: bool,
    bundle_dir: Path | None,
    name: str | None,
    version: str,
) -> TrainReport:
    if not cases:
        raise TrainingDataError("no training cases")
    if not any(lc.label == "clean" and lc.case.record is not None for lc in cases):
        raise TrainingDataError("training needs clean cases with a record (the consistency positives)")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    cfg = named_config(config) if isinstance(config, str) else config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)

    model, preprocess = create_model(cfg)
    model.to(dev)
    t0 = time.perf_counter()
    features = _extract_all(cases, preprocess, cfg, out / "cache" if cache_on_disk else None, progress)
    seconds_features = time.perf_counter() - t0
    train_idx, cal_idx, test_idx = _split(cases, seed)
    pool = _pool(features, train_idx)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["config"] != cfg.to_json() or state["n_cases"] != len(cases):
            raise TrainingDataError(
                f"{ckpt_path} was made with another config or data set; remove it or resume=False"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        losses = list(state["losses"])
        start_epoch = state["epoch"] + 1
        log.info("resuming from %s at epoch %d", ckpt_path, start_epoch)

    t1 = time.perf_counter()
    schedule = _Schedule(epochs, batch_size, steps_per_epoch, lr, seed)
    for epoch in range(start_epoch, epochs):
        losses.append(
            _run_epoch(
                model, opt, preprocess, features, cases, pool, train_idx, epoch, schedule, dev, progress
            )
        )
        log.info("epoch %d: loss %.4f", epoch + 1, losses[-1])
        torch.save(_checkpoint_state(model, opt, epoch, losses, seed, len(cases)), ckpt_path)
    seconds_training = time.perf_counter() - t1

    model.eval()
    calibration = _calibrate(
        model, preprocess, features, cases, cal_idx, pool, seed, dev, target_fpr, batch_size
    )
    bundle_path = Path(bundle_dir) if bundle_dir is not None else out / "bundle"
    bundle_name = name or f"crosscheck-fusion-{cfg.name}"
    sha = save_bundle(
        bundle_path,
        model,
        calibration,
        name=bundle_name,
        version=version,
        metadata={"trained_on": {"cases": len(cases), "epochs": epochs, "seed": seed}},
    )
    loaded = load_bundle(bundle_path, device=dev)
    evaluation = evaluate(loaded, [cases[i] for i in test_idx], features=[features[i] for i in test_idx])
    report = TrainReport(
        bundle_path=bundle_path,
        sha256=sha,
        config=cfg.name,
        device=str(dev),
        start_epoch=start_epoch,
        epochs=epochs,
        losses=tuple(losses),
        seconds_features=seconds_features,
        seconds_training=seconds_training,
        n_train=len(train_idx),
        n_calibration=len(cal_idx),
        n_test=len(test_idx),
        calibration=calibration,
        evaluation=evaluation,
        notes=("calibration and test reuse the training cases (fewer than 20 cases)",)
        if len(cases) < 20
        else (),
    )
    write_model_card(bundle_path, model_card(report, cases, loaded.name, loaded.version, model))
    return report


@torch.no_grad()
def _calibrate(
    model: CrossCheckModel,
    preprocess: Preprocess,
    features: Sequence[CaseFeatures],
    cases: Sequence[HeadTargets],
    cal_idx: Sequence[int],
    pool: _Pool,
    seed: int,
    device: torch.device,
    target_fpr: float,
    batch_size: int,
) -> Calibration:
    """Held-out logits: real cases plus one seeded record perturbation per clean case."""
    rng = np.random.default_rng([seed, 10_000])
    c_logits: list[float] = []
    c_labels: list[float] = []
    s_logits: list[float] = []
    s_labels: list[float] = []
    clean_c: list[float] = []
    clean_s: list[float] = []
    clean_rec: list[bool] = []
    for start in range(0, len(cal_idx), batch_size):
        idx = list(cal_idx[start : start + batch_size])
        batch = preprocess.collate([features[i] for i in idx], device)
        out = model(batch)
        image_tokens, image_pooled = model.encode_image(batch["image"], batch["modality"])
        neg_rows, neg_tokens = [], []
        for row, i in enumerate(idx):
            lc = cases[i]
            cl, sl = float(out.consistency_logit[row]), float(out.synthetic_logit[row])
            if lc.synthetic_target is not None:
                s_logits.append(sl)
                s_labels.append(lc.synthetic_target)
            target = lc.consistency_target
            if target is not None:
                c_logits.append(cl)
                c_labels.append(target)
            if lc.genuine:
                clean_c.append(cl)
                clean_s.append(sl)
                clean_rec.append(features[i].has_record)
                made = perturb_record(i, features, pool, rng) if features[i].has_record else None
                if made is not None:
                    neg_rows.append(row)
                    neg_tokens.append(made[1])
        if neg_rows:
            r = torch.tensor(neg_rows, device=device)
            neg = _consistency_logits(
                model, _stack_tokens(neg_tokens, device), image_tokens[r], image_pooled[r]
            )
            c_logits += [float(x) for x in neg.float().cpu()]
            c_labels += [0.0] * len(neg_rows)
    return fit_calibration(
        consistency_logits=c_logits,
        consistency_labels=c_labels,
        synthetic_logits=s_logits,
        synthetic_labels=s_labels,
        clean_consistency_logits=clean_c,
        clean_synthetic_logits=clean_s,
        clean_has_record=clean_rec,
        target_fpr=target_fpr,
    )


def model_card(
    report: TrainReport, cases: Sequence[LabelledCase], name: str, version: str, model: CrossCheckModel
) -> str:
    counts: dict[str, int] = {}
    families: dict[str, int] = {}
    for lc in cases:
        counts[lc.manipulation or "clean"] = counts.get(lc.manipulation or "clean", 0) + 1
        if lc.family is not None:
            families[lc.family] = families.get(lc.family, 0) + 1
    n_params = sum(p.numel() for p in model.parameters())
    cal = report.calibration
    lines = [
        f"# {name} {version}",
        "",
        "Image-record consistency and synthetic/tampered-image model of imaging-crosscheck.",
        "",
        "## Model",
        "",
        f"- config: `{report.config}`, {n_params:,} parameters; weights sha256 `{report.sha256}`",
        "- towers: ConvNeXt image encoder (transformers, random init), forensic branch (SRM filters,",
        "  learnt convs, FFT spectrum) on the full-resolution residual, transformer record encoder;",
        "  record-to-image cross-attention; heads: consistency, synthetic, tamper heatmap.",
        "",
        "## Training data",
        "",
        f"- {len(cases)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        *(
            [
                "- generator families of the pixel manipulations: "
                + ", ".join(f"{k} {v}" for k, v in sorted(families.items()))
            ]
            if families
            else []
        ),
        f"- split by patient: train {report.n_train}, calibration {report.n_calibration}, "
        f"test {report.n_test}",
        f"- {report.epochs} epochs on {report.device}; final training loss "
        f"{report.losses[-1]:.4f}; {report.seconds_training:.0f} s training, "
        f"{report.seconds_features:.0f} s features",
        "- consistency learnt self-supervised: true pairs against on-the-fly record perturbations",
        "  (wrong patient, clinical swap, finding removed from record, shifted labs)",
        "  plus labelled manipulations.",
        "",
        "## Calibration",
        "",
        f"- temperatures: consistency {cal.consistency_temperature:.3f}, "
        f"synthetic {cal.synthetic_temperature:.3f}",
        f"- overall = noisy-OR of p(inconsistent) and p(synthetic); threshold {cal.threshold:.4f} "
        f"for a target false-positive rate of {cal.target_fpr:.1%} on clean held-out cases",
        "",
        "## Evaluation (test split)",
        "",
        report.evaluation.to_markdown() if report.evaluation is not None else "Not evaluated.",
        "",
        "## Limitations",
        "",
        "- Trained on the simulated cohort unless stated otherwise: figures say nothing about real data.",
        "- Record codes are hashed into buckets; collisions are possible.",
        *(f"- {n}" for n in report.notes),
    ]
    return "\n".join(lines) + "\n"
