"""``crosscheck sweep`` throughput against the bound of pixel decoding + model forward alone.

    python bench/bench_sweep.py [--patients 750] [--workers 2] [--batch-size 16] [--cohort DIR]

Simulates a cohort (or reuses ``--cohort``), then in the same run:

1. the bound: the studies read and preprocessed (DICOM decoding, resampling, record
   tokens) by ``--workers`` processes, and the model's batched forward, nothing else;
2. the sweep: `plugin.sweep.run_sweep` into a fresh SQLite database (duplicate index,
   rule checks, store writes included).

Prints studies/s of both, their ratio (target >= 0.8) and the machine.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

from fusion.cohort.simulate import simulate
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer
from plugin.store import Store
from plugin.sweep import run_sweep, units_from_folder
from plugin.sweep.prepare import init_reader, load_case
from plugin.sweep.units import SweepUnit


def _features(unit: SweepUnit, preprocess: object) -> object:
    return preprocess(load_case(unit))  # type: ignore[operator]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=750)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cohort", type=Path, help="reuse a simulated cohort folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        cohort = args.cohort
        if cohort is None:
            cohort = Path(tmp) / "cohort"
            t = time.perf_counter()
            simulate(cohort, patients=args.patients, seed=3, workers=args.workers, progress=False)
            print(f"simulated {args.patients} patients in {time.perf_counter() - t:.1f} s")
        units = units_from_folder(cohort).units
        n = len(units)
        loaded = load_bundle(default_bundle_path(), device=None)
        context = multiprocessing.get_context("forkserver")
        t = time.perf_counter()
        with context.Pool(args.workers, initializer=init_reader) as pool:
            feats = list(
                pool.imap_unordered(functools.partial(_features, preprocess=loaded.preprocess), units, 1)
            )
        scorer = Scorer(loaded, checks=False)
        for start in range(0, n, args.batch_size):
            scorer.predict(feats[start : start + args.batch_size])  # type: ignore[arg-type]
        bound_s = time.perf_counter() - t
        del feats
        with Store.open(Path(tmp) / "bench.db") as store:
            found = units_from_folder(cohort)
            report = run_sweep(
                found.units,
                store=store,
                description="bench",
                site=found.site,
                workers=args.workers,
                batch_size=args.batch_size,
                progress=False,
            )
        assert report.stored + report.failed == n
        sweep_rate, bound_rate = n / report.seconds, n / bound_s
        print(f"machine: {_cpu()}, {os.cpu_count()} cores, device {loaded.device}; {args.workers} readers")
        print(f"studies: {n}")
        print(f"bound (decode + preprocess + model forward): {bound_rate:.2f} studies/s ({bound_s:.1f} s)")
        seconds = report.seconds
        print(f"sweep (index, checks, model, store writes):  {sweep_rate:.2f} studies/s ({seconds:.1f} s)")
        print(f"ratio: {sweep_rate / bound_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
