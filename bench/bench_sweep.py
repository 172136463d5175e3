"""``crosscheck sweep`` throughput against the bound of pixel decoding + model forward alone.

    python bench/bench_sweep.py [--studies 1000] [--workers 2] [--batch-size 16] [--cohort DIR] [--ray]

Simulates a cohort of at least ``--studies`` studies (or reuses ``--cohort``) and takes its first
``--studies``, then in the same run:

1. the bound: the studies read and preprocessed (DICOM decoding, resampling, record
   tokens) by ``--workers`` processes, and the model's batched forward, nothing else;
2. the sweep: `plugin.sweep.run_sweep` into a fresh SQLite database, as ``crosscheck
   sweep`` runs it (duplicate index, rule checks, record snapshots, store writes, and the
   flagged studies' images and heatmaps kept for the review page);
3. with ``--ray``: the same sweep on a local Ray cluster of ``--workers`` CPUs, into another
   database, and its results compared with the local sweep's, study by study (flag,
   finding codes, scores within 1e-4).

Prints studies/s of each, the ratio of the sweep to the bound (target >= 0.8), whether Ray
gave the same results, and the machine.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from fusion.cohort.simulate import simulate
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer
from plugin.cases.evidence import KeptEvidence
from plugin.store import Store, StoredResult
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
    parser.add_argument("--studies", type=int, default=1000, help="how many studies to sweep")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cohort", type=Path, help="reuse a simulated cohort folder")
    parser.add_argument("--ray", action="store_true", help="also sweep on a local Ray cluster and compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        cohort = args.cohort
        if cohort is None:
            cohort = Path(tmp) / "cohort"
            t = time.perf_counter()
            patients = round(args.studies / 1.28)  # the simulator gives about 1.3 studies a patient
            simulate(cohort, patients=patients, seed=3, workers=args.workers, progress=False)
            print(f"simulated {patients} patients in {time.perf_counter() - t:.1f} s")
        found = units_from_folder(cohort)
        units = found.units[: args.studies]
        if len(units) < args.studies:
            raise SystemExit(f"{cohort} holds {len(units)} studies, fewer than --studies {args.studies}")
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
        reports, results = {}, {}
        for engine in (None, "auto") if args.ray else (None,):
            with Store.open(Path(tmp) / f"bench-{engine or 'local'}.db") as store:
                report = run_sweep(
                    units,
                    store=store,
                    description="bench",
                    site=found.site,
                    workers=args.workers,
                    batch_size=args.batch_size,
                    ray=engine,
                    progress=False,
                    evidence=KeptEvidence(Path(tmp) / f"data-{engine or 'local'}"),  # as the CLI keeps
                )
                assert report.stored + report.failed == n
                reports[engine] = report
                swept = store.swept_results(report.model.sha256, [u.fingerprint for u in units])
                results[engine] = _results(swept)
                if engine is None:
                    stages = {
                        k: statistics.mean(s.result.timings_ms.get(k, 0.0) for s in swept) for k in STAGES
                    }
        bound_rate = n / bound_s
        print(f"machine: {_cpu()}, {os.cpu_count()} cores, device {loaded.device}; {args.workers} readers")
        print(f"studies: {n}")
        print(f"bound (decode + preprocess + model forward): {bound_rate:.2f} studies/s ({bound_s:.1f} s)")
        local = reports[None]
        print(
            f"sweep (checks, hash index, model, snapshots, store writes): {n / local.seconds:.2f} studies/s "
            f"({local.seconds:.1f} s; {local.stored} stored, {local.failed} failed)"
        )
        print(f"ratio: {n / local.seconds / bound_rate:.2f} (target >= 0.8)")
        print(
            "per study in the sweep, mean ms (a reader's or the model's time): "
            + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        )
        if args.ray:
            on_ray = reports["auto"]
            rate, secs = n / on_ray.seconds, on_ray.seconds
            print(f"ray sweep (local cluster, {args.workers} CPUs): {rate:.2f} studies/s ({secs:.1f} s)")
            differ = _differences(results[None], results["auto"])
            same = "yes" if not differ else "NO"
            print(f"ray results the same as the local sweep's: {same} ({len(differ)} of {n} differ)")
            for uid in differ[:5]:
                print(f"  differs: {uid}")


Row = tuple[bool, tuple[str, ...], float, float | None, float | None]


#: The stages a swept result's ``timings_ms`` names: reading and linking, preprocessing, the rule
#: checks with the perceptual hashes, and the model's share of its batch.
STAGES = ("read", "features", "checks", "model")


def _results(swept: list[StoredResult]) -> dict[str, Row]:
    return {
        s.result.case.study_instance_uid: (
            s.result.flagged,
            tuple(f.code for f in s.result.findings),
            s.result.scores.overall,
            s.result.scores.consistency,
            s.result.scores.synthetic,
        )
        for s in swept
    }


def _differences(a: dict[str, Row], b: dict[str, Row]) -> list[str]:
    def close(x: float | None, y: float | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 1e-4)

    return sorted(
        uid
        for uid in a.keys() | b.keys()
        if uid not in a
        or uid not in b
        or a[uid][:2] != b[uid][:2]
        or not all(close(x, y) for x, y in zip(a[uid][2:], b[uid][2:], strict=True))
    )


if __name__ == "__main__":
    main()
