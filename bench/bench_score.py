"""Scoring speed and memory: studies per second by batch size, FLOPs, peak resident memory.

Usage: ``python bench/bench_score.py [--device cpu|cuda] [--batch-sizes 1,4,16,32] [--bf16] [--compile]``.

Simulates a small cohort (seed 77, never used in training) in a temporary folder,
loads its cases, and scores them with the shipped model bundle (or ``--model``):

- preprocessing (decoding pixels, resampling, record tokens) per study, on the CPU;
- the model alone per batch size: studies per second, and achieved FLOP/s from
  ``torch.utils.flop_counter`` (on CUDA also the fraction of the GPU's peak:
  ``--peak-tflops``, default 989 for H100/H200 dense bf16);
- the whole ``Scorer.score_many`` (preprocess, model, rule checks) per batch size;
- peak resident memory of a fresh process that loads the model and scores one
  study (``ru_maxrss``), the figure the 1.5 GB goal is about.

Prints the figures and the machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer
from plugin.cohort import load_cohort
from plugin.training import load_labelled

_ONE_STUDY = """
import resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from plugin.cohort import load_cohort
from fusion.model.bundle import load_bundle
from fusion.scorer import Scorer
cohort = load_cohort(Path(sys.argv[1]))
case = next(cohort.iter_cases()).case
scorer = Scorer(load_bundle(Path(sys.argv[2]), device=sys.argv[3]))
t1 = time.perf_counter()
result = scorer.score(case)
t2 = time.perf_counter()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, round((t1 - t0) * 1000), round((t2 - t1) * 1000))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,4,16,32")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the model")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    model_path = args.model or default_bundle_path()
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]

    from fusion.cohort.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        cohort_dir = Path(tmp) / "cohort"
        simulate(cohort_dir, args.patients, seed=77, workers=None)
        cohort = load_cohort(cohort_dir)
        cases = [lc.case for lc in load_labelled(cohort, progress=False)]

        rss = subprocess.run(
            [sys.executable, "-c", _ONE_STUDY, str(cohort_dir), str(model_path), args.device],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        loaded = load_bundle(model_path, device=args.device)
        if args.compile:
            loaded.model = torch.compile(loaded.model)  # type: ignore[assignment]
        scorer = Scorer(loaded, checks=True)
        device = loaded.device
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
        )

        t = time.perf_counter()
        features = [loaded.preprocess(c) for c in cases]
        preprocess_ms = (time.perf_counter() - t) * 1000 / len(cases)

        with FlopCounterMode(display=False) as counter:
            with autocast:
                scorer.predict(features[:1])
        flops_per_study = counter.get_total_flops()

        print(f"model         {loaded.info.name} {loaded.info.version} ({model_path})")
        print(
            f"device        {device}"
            f"{' bf16 autocast' if args.bf16 else ''}{' compiled' if args.compile else ''}"
        )
        print(f"studies       {len(cases)} ({args.patients} simulated patients, seed 77)")
        print(f"preprocess    {preprocess_ms:.1f} ms per study (CPU: decode, resample, tokens)")
        print(f"model FLOPs   {flops_per_study / 1e9:.2f} GFLOP per study")
        print(
            f"peak RSS      {int(rss[0]) / 1024:.0f} MB for a fresh process scoring one study "
            f"(start-up {rss[1]} ms, first score {rss[2]} ms)"
        )
        print("\nbatch   model studies/s   achieved FLOP/s        whole score_many studies/s")
        for size in sizes:
            with autocast:
                scorer.predict(features[:size])  # warm-up (and compilation)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                for s in range(0, len(features), size):
                    with autocast:
                        scorer.predict(features[s : s + size])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
            model_rate = len(features) / best
            achieved = model_rate * flops_per_study
            peak = (
                f" ({achieved / (args.peak_tflops * 1e12) * 100:.2f}% of peak)"
                if device.type == "cuda"
                else ""
            )
            t = time.perf_counter()
            with autocast:
                scorer.score_many(cases, batch_size=size)
            whole_rate = len(cases) / (time.perf_counter() - t)
            print(
                f"{size:5d}   {model_rate:15.1f}   {achieved / 1e9:9.1f} GFLOP/s"
                f"{peak:>18s}   {whole_rate:10.1f}"
            )

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"\nmachine       {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), GPU {gpu}, "
        f"Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
