"""Prometheus metrics of the service (``GET /metrics``): one registry per app.

- ``crosscheck_http_request_seconds{route, method, status}``: latency per endpoint (the
  route template, so ids in paths do not explode the label space);
- ``crosscheck_score{score}``: distribution of the overall, consistency and synthetic scores;
- ``crosscheck_results_total{flagged, source}``: results made;
- ``crosscheck_result_lookups_total{outcome}``: ``hit`` (answered from the store), ``miss``
  (scored now), ``deadline`` (still running when the hook had to answer).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from fusion.result import CrossCheckResult

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "crosscheck_http_request_seconds",
            "Time to answer an HTTP request, by route template",
            ("route", "method", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.scores = Histogram(
            "crosscheck_score",
            "Calibrated scores of the results made",
            ("score",),
            buckets=_SCORE_BUCKETS,
            registry=self.registry,
        )
        self.results = Counter(
            "crosscheck_results", "Results made", ("flagged", "source"), registry=self.registry
        )
        self.lookups = Counter(
            "crosscheck_result_lookups",
            "Hook and REST lookups of a study's result: hit, miss, deadline",
            ("outcome",),
            registry=self.registry,
        )

    def observe_result(self, result: CrossCheckResult, source: str) -> None:
        s = result.scores
        self.scores.labels("overall").observe(s.overall)
        if s.consistency is not None:
            self.scores.labels("consistency").observe(s.consistency)
        if s.synthetic is not None:
            self.scores.labels("synthetic").observe(s.synthetic)
        self.results.labels(str(result.flagged).lower(), source).inc()

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.latency.labels(template, request.method, str(status)).observe(time.perf_counter() - start)
