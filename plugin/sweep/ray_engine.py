"""A sweep on a Ray cluster (``--ray ADDRESS``; ``--ray auto`` starts a local one).

Readers are Ray tasks, one per chunk of ``batch_size`` studies, data-parallel over the
cluster's CPUs; the model is one `SweepScorer` actor (``num_gpus=1`` when the cluster has
a GPU). What a reader returns goes to the actor by object reference, never through the
driver; the driver receives the results and writes them to the store as they come.
Needs ``pip install 'imaging-crosscheck[ray]'`` on the driver and on the cluster's nodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import plugin
from fusion.result import ModelInfo
from plugin.errors import UsageError
from plugin.sweep.prepare import Fingerprinted, ReaderConfig, fingerprint_many, prepare_many
from plugin.sweep.scoring import Amendment, Scored, SweepScorer
from plugin.sweep.units import SweepUnit

__all__ = ["RayEngine"]

logger = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--ray needs Ray: pip install 'imaging-crosscheck[ray]'") from exc
    return ray


class RayEngine:
    """Readers as Ray tasks, the model in a Ray actor; a context manager (it shuts down a local
    cluster it started)."""

    def __init__(
        self,
        address: str,
        config: ReaderConfig,
        *,
        model: Path | None,
        device: str | None,
        batch_size: int,
        workers: int | None = None,
    ) -> None:
        ray = self.ray = _ray()
        self.config = config
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._started = False
        if not ray.is_initialized():
            root = str(Path(plugin.__file__).resolve().parents[1])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            options: dict[str, Any] = {
                "runtime_env": {"env_vars": {"PYTHONPATH": path}},
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                "log_to_driver": False,
            }
            try:
                if address == "auto":
                    ray.init(num_cpus=workers, **options)
                else:
                    ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"cannot reach the Ray cluster at {address} ({type(exc).__name__})") from exc
            self._started = True
        self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._gpus = int(ray.cluster_resources().get("GPU", 0))
        self._actor: Any = None

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._actor is not None:
            self.ray.kill(self._actor)
            self._actor = None
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _chunks(self, units: Sequence[SweepUnit]) -> list[list[SweepUnit]]:
        return [list(units[i : i + self.batch_size]) for i in range(0, len(units), self.batch_size)]

    def fingerprints(self, units: Sequence[SweepUnit]) -> Iterator[Fingerprinted]:
        task = self.ray.remote(num_cpus=1)(fingerprint_many)
        pending = [task.remote(chunk, self.config.strictness) for chunk in self._chunks(units)]
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            yield from self.ray.get(ready[0])

    def start(self, fingerprints: Sequence[Fingerprinted] | None) -> ModelInfo:
        gpu = self._gpus > 0
        device = self.device or ("cuda" if gpu else "cpu")
        # on CPUs the actor takes no CPU of its own (the readers would get one fewer) and runs
        # torch on one thread: it waits for the readers most of the time, as the local sweep's does
        actor = self.ray.remote(num_gpus=1 if gpu else 0, num_cpus=0)(SweepScorer)
        self._actor = actor.remote(self.model, device, fingerprints, None if gpu else 1)
        info: ModelInfo = self.ray.get(self._actor.model_info.remote())
        return info

    def results(self, units: Sequence[SweepUnit]) -> Iterator[tuple[list[Scored], list[Amendment]]]:
        """As `LocalEngine.results`: batches in the order the actor scored them (an `Amendment`
        names a study of an earlier batch, which the driver must have stored first)."""
        if self._actor is None:
            raise RuntimeError("call start() first")
        ray = self.ray
        task = ray.remote(num_cpus=1)(prepare_many)
        config = ray.put(self.config)
        chunks = self._chunks(units)
        reading: list[Any] = []
        scoring: list[Any] = []
        limit = 2 * self._cpus
        while chunks or reading or scoring:
            while chunks and len(reading) + len(scoring) < limit:
                reading.append(task.remote(chunks.pop(0), config))
            ready, _ = ray.wait(reading + scoring[:1], num_returns=1)
            ref = ready[0]
            if ref in reading:
                reading.remove(ref)
                scoring.append(self._actor.score_items.remote(ref))
            else:  # the oldest call: an actor runs its calls in the order they were made
                scoring.pop(0)
                yield ray.get(ref)
