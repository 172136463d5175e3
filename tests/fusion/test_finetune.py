"""Fine-tuning a bundle on labelled cases: per-head targets, the bundle it writes, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from fusion.calibrate import Calibration
from fusion.errors import TrainingDataError
from fusion.finetune import MIN_CALIBRATION_CLEAN, TargetedCase, fine_tune
from fusion.model import create_model, load_bundle, save_bundle
from fusion.model.bundle import LoadedModel
from fusion.train import LabelledCase, _batch_loss, _pool

KW = {"batch_size": 8, "progress": False, "num_threads": 1, "lr": 5e-3, "epochs": 2}


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny untrained bundle (fine-tuning does not care how the parent was made)."""
    torch.manual_seed(5)
    model, _ = create_model("tiny")
    folder = tmp_path_factory.mktemp("parent") / "bundle"
    save_bundle(folder, model, Calibration(threshold=0.6), name="tiny-parent", version="1.2.0")
    return load_bundle(folder, device="cpu")


def _labelled(mc: ModuleType) -> list[TargetedCase]:
    return [
        TargetedCase(mc.make_case(900 + i, modality=m, size=40), 1.0, 0.0, genuine=True, label="clean")
        for i, m in enumerate(("DX", "CT", "MR"))
    ] + [
        TargetedCase(mc.make_case(910, smooth=True, size=40), None, 1.0, label="synthetic"),
        TargetedCase(mc.make_case(911, size=40), 0.0, None, label="wrong-patient"),
    ]


def test_targeted_case_validates_its_targets(mc: ModuleType) -> None:
    case = mc.make_case(1, size=40)
    with pytest.raises(ValueError, match="0, 1 or None"):
        TargetedCase(case, 0.5, None)
    with pytest.raises(ValueError, match="at least one head"):
        TargetedCase(case, None, None)
    with pytest.raises(ValueError, match="genuine"):
        TargetedCase(case, 0.0, 0.0, genuine=True)
    no_record = TargetedCase(mc.make_case(2, size=40, with_record=False), 0.0, 1.0)
    assert no_record.consistency_target is None and no_record.synthetic_target == 1.0
    assert TargetedCase(case, 0.0, None).consistency_target == 0.0


def _grad_norms(parent: LoadedModel, targeted: list[TargetedCase]) -> dict[str, float]:
    """The gradient's norm on each head after one batch of ``targeted``."""
    model, preprocess = create_model("tiny")
    model.load_state_dict(parent.model.state_dict())
    features = [preprocess(tc.case) for tc in targeted]
    loss, _ = _batch_loss(
        model,
        preprocess,
        list(range(len(targeted))),
        features,
        targeted,
        _pool(features, range(len(targeted))),
        np.random.default_rng(0),
        torch.device("cpu"),
        augment=False,
    )
    loss.backward()  # type: ignore[no-untyped-call]
    heads = {"synthetic": model.synthetic_head, "consistency": model.pool_head}
    return {
        name: sum(float(p.grad.norm()) for p in head.parameters() if p.grad is not None)
        for name, head in heads.items()
    }


def test_a_label_trains_only_the_heads_it_speaks_for(parent: LoadedModel, mc: ModuleType) -> None:
    wrong_patient = _grad_norms(
        parent, [TargetedCase(mc.make_case(20 + i, size=40), 0.0, None) for i in range(2)]
    )
    assert wrong_patient["consistency"] > 0 and wrong_patient["synthetic"] == 0
    synthetic = _grad_norms(
        parent, [TargetedCase(mc.make_case(30 + i, size=40), None, 1.0) for i in range(2)]
    )
    assert synthetic["synthetic"] > 0 and synthetic["consistency"] == 0
    clean = _grad_norms(
        parent, [TargetedCase(mc.make_case(40 + i, size=40), 1.0, 0.0, genuine=True) for i in range(2)]
    )
    assert clean["synthetic"] > 0 and clean["consistency"] > 0


def test_fine_tune_writes_a_loadable_bundle_with_its_lineage(
    parent: LoadedModel, mc: ModuleType, tmp_path: Path
) -> None:
    before = {k: v.clone() for k, v in parent.model.state_dict().items()}
    replay = mc.make_cohort(8, size=40, seed=3)
    report = fine_tune(
        parent,
        _labelled(mc),
        replay=replay,
        out=tmp_path / "ft",
        version="1.2.0+ft.test",
        metadata={"labels": {"sha256": "c" * 64}},
        card_notes=["labels: a test"],
        **KW,
    )
    for name, tensor in parent.model.state_dict().items():  # the parent is left as it was
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    loaded = load_bundle(report.bundle_path)
    assert (loaded.name, loaded.version, loaded.sha256) == ("tiny-parent", "1.2.0+ft.test", report.sha256)
    assert loaded.sha256 != parent.sha256
    meta = json.loads((report.bundle_path / "config.json").read_text())["fine_tuned"]
    assert meta["parent"] == {"name": "tiny-parent", "version": "1.2.0", "sha256": parent.sha256}
    assert meta["labels"] == {"sha256": "c" * 64}
    assert (meta["labelled"], meta["replay"], meta["calibration"]) == (5, 8, {"cases": 0, "refit": False})
    assert loaded.calibration == parent.calibration  # nothing held out to fit it on
    assert not report.recalibrated and len(report.losses) == 2
    assert len(report.before) == len(report.after) == 5
    assert set(report.by_label()) == {"clean", "synthetic", "wrong-patient"}
    card = (report.bundle_path / "MODEL_CARD.md").read_text()
    assert parent.sha256 in card and "labels: a test" in card and "the parent's, unchanged" in card


def test_fine_tuning_is_deterministic_and_refits_the_calibration(
    parent: LoadedModel, mc: ModuleType, tmp_path: Path
) -> None:
    calibration = mc.make_cohort(28, size=40, seed=4)
    assert sum(lc.label == "clean" for lc in calibration) >= MIN_CALIBRATION_CLEAN
    runs = [
        fine_tune(
            parent, _labelled(mc), calibration=calibration, out=tmp_path / name, version="v", seed=1, **KW
        )
        for name in ("a", "b")
    ]
    assert runs[0].recalibrated and runs[0].n_calibration == 28
    assert runs[0].losses == pytest.approx(runs[1].losses, rel=1e-6)
    wa, wb = (load_bundle(r.bundle_path).model.state_dict() for r in runs)
    for name, tensor in wa.items():
        torch.testing.assert_close(tensor, wb[name], rtol=1e-4, atol=1e-5)
    configs = [json.loads((r.bundle_path / "config.json").read_text()) for r in runs]
    assert configs[0] == configs[1]


def test_fine_tune_refuses_unusable_arguments(parent: LoadedModel, mc: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no labelled studies"):
        fine_tune(parent, [], out=tmp_path, version="v")
    with pytest.raises(ValueError, match="lr"):
        fine_tune(parent, _labelled(mc), out=tmp_path, version="v", lr=0.0)
    with pytest.raises(ValueError, match="epochs"):
        fine_tune(parent, _labelled(mc), out=tmp_path, version="v", epochs=0)


def test_labelled_cases_are_head_targets(mc: ModuleType) -> None:
    lc = LabelledCase(mc.make_case(3, size=40), None, "clean")
    assert lc.genuine and not LabelledCase(lc.case, "synthetic", "manipulated").genuine
