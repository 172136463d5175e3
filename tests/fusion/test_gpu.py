"""The GPU path: scoring and training on CUDA agree with the CPU. Runs only where CUDA is present."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fusion.model import load_bundle
from fusion.model.bundle import default_bundle_path
from fusion.scorer import Scorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU machine)"),
]


def _model_cases() -> ModuleType:
    name = "tests_fusion_model_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_model_cases.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def cases():
    mc = _model_cases()
    return [
        mc.make_case(seed, modality=m, lesion=seed % 2 == 0, size=40)
        for seed, m in enumerate("DX CT MR DX".split())
    ]


def test_default_model_scores_the_same_on_cuda_and_cpu(cases):
    cpu = Scorer(load_bundle(default_bundle_path(), device="cpu"), checks=False).score_many(cases)
    gpu_scorer = Scorer(load_bundle(default_bundle_path(), device="cuda"), checks=False)
    assert gpu_scorer.bundle.device.type == "cuda"
    gpu = gpu_scorer.score_many(cases)
    for a, b in zip(cpu, gpu, strict=True):
        assert b.scores.synthetic == pytest.approx(a.scores.synthetic, abs=2e-3)
        assert b.scores.consistency == pytest.approx(a.scores.consistency, abs=2e-3)
        assert b.model.sha256 == a.model.sha256


def test_bf16_autocast_stays_close(cases):
    scorer = Scorer(load_bundle(default_bundle_path(), device="cuda"), checks=False)
    full = scorer.score_many(cases)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = scorer.score_many(cases)
    for a, b in zip(full, half, strict=True):
        assert b.scores.synthetic == pytest.approx(a.scores.synthetic, abs=0.05)


def test_training_runs_on_cuda_with_mixed_precision(tmp_path, cases):
    from fusion.train import LabelledCase, train

    labelled = [
        LabelledCase(c, None if i % 2 else "synthetic", "clean" if i % 2 else "manipulated")
        for i, c in enumerate(cases * 3)
    ]
    report = train(
        labelled,
        "tiny",
        epochs=1,
        batch_size=4,
        device="cuda",
        seed=0,
        out=tmp_path / "work",
        progress=False,
        bundle_dir=tmp_path / "bundle",
    )
    assert report.device.startswith("cuda")
    assert (tmp_path / "bundle" / "model.safetensors").is_file()
