"""Calibration: a temperature per head, and a threshold on ``overall``.

- ``fit_temperature``: temperature scaling (Guo et al. 2017), one scalar ``T``
  per head minimising the negative log-likelihood of ``sigmoid(logit / T)`` on
  held-out labelled logits (LBFGS on ``log T``).
- ``overall_score``: **noisy-OR** of the two calibrated probabilities,
  ``1 - (1 - p_inconsistent) * (1 - p_synthetic)``: the case deserves review if
  either the image does not fit the record or the pixels look synthetic. It
  needs no extra parameters (a learnt logistic combination would need labelled
  manipulations, which a site training self-supervised does not have); a part
  that cannot be scored (no record, no pixels) drops out of the product.
- ``threshold_for_fpr``: the threshold on ``overall`` that flags at most
  ``target_fpr`` of clean held-out cases (default 1 %).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Calibration",
    "fit_calibration",
    "fit_temperature",
    "overall_score",
    "sigmoid",
    "threshold_for_fpr",
]


@dataclass(frozen=True)
class Calibration:
    """What a bundle's ``calibration.json`` holds."""

    consistency_temperature: float = 1.0
    synthetic_temperature: float = 1.0
    threshold: float = 0.5
    target_fpr: float = 0.01
    combination: str = "noisy-or"

    def __post_init__(self) -> None:
        if not (self.consistency_temperature > 0 and self.synthetic_temperature > 0):
            raise ValueError("temperatures must be positive")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be a probability")

    def p_consistent(self, logit: ArrayLike) -> NDArray[np.float64]:
        return sigmoid(np.asarray(logit, np.float64) / self.consistency_temperature)

    def p_synthetic(self, logit: ArrayLike) -> NDArray[np.float64]:
        return sigmoid(np.asarray(logit, np.float64) / self.synthetic_temperature)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def fit_temperature(logits: ArrayLike, labels: ArrayLike, *, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of ``sigmoid(logits / T)``; 1.0 if both classes are not present."""
    z = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.float64))
    if z.numel() == 0 or z.shape != y.shape or float(y.min()) == float(y.max()):
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    t = float(log_t.detach().exp())
    return float(min(max(t, 0.05), 100.0)) if math.isfinite(t) else 1.0


def overall_score(p_inconsistent: float | None, p_synthetic: float | None) -> float:
    """Noisy-OR of the parts that could be scored (0 when none could)."""
    keep = 1.0
    for p in (p_inconsistent, p_synthetic):
        if p is not None:
            keep *= 1.0 - p
    return float(min(1.0, max(0.0, 1.0 - keep)))


def threshold_for_fpr(clean_overall: ArrayLike, target_fpr: float = 0.01) -> float:
    """Smallest threshold flagging at most ``target_fpr`` of ``clean_overall`` (``>=`` flags)."""
    scores = np.sort(np.asarray(clean_overall, np.float64))
    if scores.size == 0:
        return 0.5
    allowed = math.floor(target_fpr * scores.size)  # clean cases we may flag
    above = scores[scores.size - 1 - allowed]  # must stay strictly below the threshold
    return float(min(1.0, np.nextafter(above, np.inf)))


def fit_calibration(
    *,
    consistency_logits: ArrayLike,
    consistency_labels: ArrayLike,
    synthetic_logits: ArrayLike,
    synthetic_labels: ArrayLike,
    clean_consistency_logits: ArrayLike,
    clean_synthetic_logits: ArrayLike,
    clean_has_record: ArrayLike | None = None,
    target_fpr: float = 0.01,
) -> Calibration:
    """Temperatures from labelled held-out logits, then the threshold from clean held-out cases.

    ``consistency_labels``: 1 = consistent; ``synthetic_labels``: 1 = synthetic.
    ``clean_*``: the raw logits of the clean held-out cases, whose ``overall``
    sets the threshold (``clean_has_record`` False drops the consistency part).
    """
    t_c = fit_temperature(consistency_logits, consistency_labels)
    t_s = fit_temperature(synthetic_logits, synthetic_labels)
    cal = Calibration(consistency_temperature=t_c, synthetic_temperature=t_s, target_fpr=target_fpr)
    c_logits = np.asarray(clean_consistency_logits, np.float64)
    s_logits = np.asarray(clean_synthetic_logits, np.float64)
    rec = np.ones(c_logits.shape[0], bool) if clean_has_record is None else np.asarray(clean_has_record, bool)
    p_inc = 1.0 - cal.p_consistent(c_logits)
    p_syn = cal.p_synthetic(s_logits)
    overall = [
        overall_score(float(pi) if r else None, float(ps))
        for pi, ps, r in zip(p_inc, p_syn, rec, strict=True)
    ]
    return Calibration(t_c, t_s, threshold_for_fpr(overall, target_fpr), target_fpr)
