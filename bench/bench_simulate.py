"""Times `fusion.cohort.simulate.simulate` on a temporary folder.

Usage: ``python bench/bench_simulate.py [--patients N] [--seed S] [--workers W]``.
Prints patients, studies, files written, seconds, patients per second and the
machine (platform, CPU count), so figures from different machines can be told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from fusion.cohort.simulate import simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--rate", type=float, default=0.3, help="share of manipulated studies")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        out = Path(tmp) / "cohort"
        start = time.perf_counter()
        manifest_path = simulate(
            out, args.patients, args.seed, manipulated_rate=args.rate, workers=args.workers
        )
        seconds = time.perf_counter() - start
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = sum(1 for p in out.rglob("*") if p.is_file())
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6

    studies = len(manifest["cases"])
    print(f"patients      {args.patients}")
    print(f"studies       {studies}")
    print(f"files         {files} ({size_mb:.1f} MB)")
    print(f"seconds       {seconds:.2f}")
    print(f"patients/s    {args.patients / seconds:.2f}")
    print(f"skipped kinds {', '.join(manifest['skipped_kinds']) or '-'}")
    print(
        f"machine       {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, workers={args.workers or os.cpu_count()}, Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
