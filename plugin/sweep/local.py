"""A sweep on this machine: reader processes, the model in the main process.

The readers are a ``forkserver`` pool (a clean process, not a fork of one that holds the
model and torch's threads), each with one torch thread; the main process batches what
they return through `SweepScorer` (on CUDA when there is one).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from multiprocessing.pool import Pool
from pathlib import Path

import torch

from fusion.result import ModelInfo
from plugin.sweep.prepare import (
    Failed,
    Fingerprinted,
    Prepared,
    ReaderConfig,
    fingerprint_unit,
    init_reader,
    prepare_unit,
)
from plugin.sweep.scoring import Amendment, Scored, SweepScorer
from plugin.sweep.units import SweepUnit

__all__ = ["LocalEngine"]

logger = logging.getLogger(__name__)


class LocalEngine:
    """``workers`` reader processes and the model in this process; a context manager."""

    def __init__(
        self,
        config: ReaderConfig,
        *,
        model: Path | None,
        device: str | None,
        workers: int,
        batch_size: int,
    ) -> None:
        self.config = config
        self.model = model
        self.device = device
        self.batch_size = batch_size
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["plugin.sweep.prepare"])
        self._pool: Pool = context.Pool(workers, initializer=init_reader)
        self._scorer: SweepScorer | None = None
        self._workers = workers
        self._threads: int | None = None  # torch's threads in this process before the sweep

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None

    def fingerprints(self, units: Sequence[SweepUnit]) -> Iterator[Fingerprinted]:
        """The units' perceptual hashes (those a resumed sweep did before), in no particular order."""
        work = functools.partial(fingerprint_unit, strictness=self.config.strictness)
        yield from self._pool.imap_unordered(work, units, chunksize=4)

    def start(self, fingerprints: Sequence[Fingerprinted] | None) -> ModelInfo:
        """Load the model (and the duplicate index of the studies done before; ``None``: no
        duplicate check); what the results will name as their model."""
        self._threads = torch.get_num_threads()
        threads = max(1, (os.cpu_count() or 1) - self._workers)
        self._scorer = SweepScorer(self.model, self.device, fingerprints, cpu_threads=threads)
        logger.info("sweep model on %s, %d torch threads", self._scorer.device(), torch.get_num_threads())
        return self._scorer.model_info()

    def results(self, units: Sequence[SweepUnit]) -> Iterator[tuple[list[Scored], list[Amendment]]]:
        """Batches of results (or failures) as the readers deliver, at most ``batch_size`` each, in
        the order they were scored, each with the amendments of earlier studies it brings."""
        if self._scorer is None:
            raise RuntimeError("call start() first")
        work = functools.partial(prepare_unit, config=self.config)
        batch: list[Prepared | Failed] = []
        for item in self._pool.imap_unordered(work, units, chunksize=1):
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield self._scorer.score_items(batch)
                batch = []
        if batch:
            yield self._scorer.score_items(batch)
