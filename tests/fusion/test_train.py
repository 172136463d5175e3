"""Training, checkpoints, bundles, calibration and evaluation on a handful of hand-built cases."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from fusion.calibrate import Calibration, fit_temperature, overall_score, threshold_for_fpr
from fusion.errors import ModelBundleError, TrainingDataError
from fusion.evaluate import EvaluationReport, auroc, evaluate, expected_calibration_error
from fusion.features import TokenKind
from fusion.model import create_model, load_bundle, save_bundle
from fusion.model.bundle import sha256_file
from fusion.train import LabelledCase, _pool, learning_rate, perturb_record, train


def _load_model_cases() -> ModuleType:
    name = "tests_fusion_model_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_model_cases.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


mc = _load_model_cases()
KW = {"batch_size": 8, "progress": False, "seed": 0, "num_threads": 1, "lr": 5e-3}


@pytest.fixture(scope="module")
def cohort() -> list[LabelledCase]:
    return mc.make_cohort(16, size=40, manipulated_every=4)


@pytest.fixture(scope="module")
def trained(cohort: list[LabelledCase], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("train")
    report = train(cohort, "tiny", epochs=2, out=out, **KW)
    return out, report


def test_training_loss_drops_and_bundle_is_complete(trained) -> None:  # type: ignore[no-untyped-def]
    out, report = trained
    assert len(report.losses) == 2 and report.start_epoch == 0
    assert report.losses[-1] < report.losses[0]
    for name in ("model.safetensors", "config.json", "calibration.json", "MODEL_CARD.md"):
        assert (report.bundle_path / name).is_file()
    assert (out / "checkpoint.pt").is_file()
    card = (report.bundle_path / "MODEL_CARD.md").read_text()
    assert report.sha256 in card and "AUROC" in card and "threshold" in card
    assert isinstance(report.evaluation, EvaluationReport)
    assert 0.0 < report.calibration.threshold <= 1.0


def test_loaded_bundle_matches_saved_weights(trained) -> None:  # type: ignore[no-untyped-def]
    _, report = trained
    loaded = load_bundle(report.bundle_path, device="cpu")
    assert loaded.sha256 == report.sha256 == sha256_file(report.bundle_path / "model.safetensors")
    assert loaded.calibration == report.calibration
    assert not loaded.model.training


def test_save_then_load_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model, preprocess = create_model("tiny")
    model.eval()
    cal = Calibration(consistency_temperature=1.5, synthetic_temperature=0.7, threshold=0.4)
    sha = save_bundle(tmp_path / "b", model, cal, name="t", version="9")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.sha256 == sha and loaded.calibration == cal and loaded.name == "t"
    cases = [
        mc.make_case(i, modality=m, lesion=bool(i % 2), size=40) for i, m in enumerate(("DX", "CT", "MR"))
    ]
    batch = preprocess.batch(cases)
    with torch.no_grad():
        a, b = model(batch), loaded.model(loaded.preprocess.batch(cases))
    torch.testing.assert_close(a.consistency_logit, b.consistency_logit, rtol=0, atol=0)
    torch.testing.assert_close(a.synthetic_logit, b.synthetic_logit, rtol=0, atol=0)


def test_resume_continues_from_checkpoint(cohort: list[LabelledCase], trained) -> None:  # type: ignore[no-untyped-def]
    out, first = trained
    resumed = train(cohort, "tiny", epochs=3, out=out, resume=True, bundle_dir=out / "bundle3", **KW)
    assert resumed.start_epoch == 2
    assert len(resumed.losses) == 3
    assert resumed.losses[:2] == pytest.approx(first.losses)
    assert resumed.sha256 != first.sha256  # one more epoch changed the weights
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2
    with pytest.raises(TrainingDataError, match="another config"):
        train(cohort[:-1], "tiny", epochs=3, out=out, resume=True, **KW)


def test_training_is_deterministic(cohort: list[LabelledCase], tmp_path: Path) -> None:
    a = train(cohort[:8], "tiny", epochs=1, out=tmp_path / "a", **KW)
    b = train(cohort[:8], "tiny", epochs=1, out=tmp_path / "b", **KW)
    assert a.losses == pytest.approx(b.losses, rel=1e-6)
    # bit-identity is not guaranteed on CPU (vectorised reductions can depend on memory alignment)
    wa, wb = load_bundle(a.bundle_path).model.state_dict(), load_bundle(b.bundle_path).model.state_dict()
    for name, tensor in wa.items():
        torch.testing.assert_close(tensor, wb[name], rtol=1e-4, atol=1e-5)


def test_train_rejects_unusable_data(cohort: list[LabelledCase], tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError):
        train([], "tiny", out=tmp_path)
    manipulated = [lc for lc in cohort if lc.label == "manipulated"]
    with pytest.raises(TrainingDataError, match="clean cases"):
        train(manipulated, "tiny", out=tmp_path)


def test_labelled_case_validates_label() -> None:
    case = mc.make_case(1)
    with pytest.raises(ValueError):
        LabelledCase(case=case, manipulation=None, label="manipulated")
    with pytest.raises(ValueError):
        LabelledCase(case=case, manipulation="synthetic", label="clean")
    assert LabelledCase(case, "finding-injected", "manipulated").consistency_target == 0.0
    assert LabelledCase(case, "header-dates", "manipulated").consistency_target == 1.0
    assert LabelledCase(case, "header-dates", "manipulated").synthetic_target == 0.0
    assert LabelledCase(case, "synthetic", "manipulated").synthetic_target == 1.0


def test_record_perturbations_change_the_record(cohort: list[LabelledCase]) -> None:
    from fusion.model.config import named_config
    from fusion.model.factory import Preprocess

    pre = Preprocess(named_config("tiny").features)
    feats = [pre(lc.case) for lc in cohort]
    pool = _pool(feats, range(len(feats)))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        for i in range(len(feats)):
            made = perturb_record(i, feats, pool, rng)
            if made is None:
                continue
            name, tok = made
            seen.add(name)
            f = feats[i]
            same = all(
                np.array_equal(tok[k], getattr(f, k)) for k in ("token_code", "token_value", "token_mask")
            )
            assert not same, name
            if name == "finding-removed-from-record":
                assert TokenKind.CONDITION not in set(tok["token_kind"][tok["token_mask"]].tolist())
    assert {"wrong-patient", "clinical-swap", "finding-removed-from-record", "labs-shifted"} <= seen


def test_bundle_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelBundleError, match="crosscheck train"):
        load_bundle(tmp_path / "nope")
    torch.manual_seed(0)
    model, _ = create_model("tiny")
    save_bundle(tmp_path / "b", model, Calibration())
    (tmp_path / "b" / "calibration.json").unlink()
    with pytest.raises(ModelBundleError, match=r"missing calibration\.json"):
        load_bundle(tmp_path / "b")
    save_bundle(tmp_path / "c", model, Calibration())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["model"]["d_model"] = 32
    cfg["model"]["fusion_heads"] = 2
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelBundleError, match="do not load"):
        load_bundle(tmp_path / "c")


def test_fit_temperature_recovers_the_true_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z / 2.5))).astype(float)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.1)
    assert fit_temperature(z, np.ones_like(z)) == 1.0  # one class: leave as is


def test_threshold_keeps_false_positive_rate_at_target() -> None:
    clean = np.random.default_rng(1).random(1000)
    t = threshold_for_fpr(clean, 0.01)
    assert (clean >= t).mean() <= 0.01
    assert (clean >= t - 0.01).mean() > 0.005  # not needlessly high
    assert overall_score(0.5, 0.5) == pytest.approx(0.75)
    assert overall_score(None, 0.2) == pytest.approx(0.2)
    assert overall_score(None, None) == 0.0


def test_metrics() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([1, 1], [0.1, 0.2]) is None
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    assert expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)


def test_evaluate_counts_and_serialises(trained, cohort: list[LabelledCase]) -> None:  # type: ignore[no-untyped-def]
    _, report = trained
    ev = evaluate(load_bundle(report.bundle_path), cohort)
    assert ev.counts["clean"] == sum(lc.label == "clean" for lc in cohort)
    assert set(ev.auroc_overall) == {
        "all",
        "synthetic",
        "finding-injected",
        "finding-removed",
        "wrong-patient",
    }
    assert 0.0 <= (ev.false_positive_rate or 0.0) <= 1.0
    assert json.loads(ev.dumps())["sha256"] == report.sha256
    assert "| clean |" in ev.to_markdown()


def test_learning_rate_schedule() -> None:
    lrs = [learning_rate(s, 100, 1.0) for s in range(100)]
    assert lrs[0] < lrs[14] <= 1.0 and lrs[-1] < 0.1 and max(lrs) == pytest.approx(1.0)


def test_detection_figures_from_results(trained, cohort: list[LabelledCase]) -> None:  # type: ignore[no-untyped-def]
    from fusion.evaluate import detection_figures
    from fusion.scorer import Scorer

    _, report = trained
    results = Scorer(load_bundle(report.bundle_path), checks=False).score_many([lc.case for lc in cohort])
    figures = detection_figures(results, [lc.manipulation for lc in cohort])
    assert figures.clean_count + figures.manipulated_count == len(cohort)
    assert {k.kind for k in figures.per_kind} == {lc.manipulation for lc in cohort} - {None}
    assert figures.clean_flagged == sum(
        r.flagged for r, lc in zip(results, cohort, strict=True) if lc.label == "clean"
    )
    with pytest.raises(ValueError):
        detection_figures(results, [])
