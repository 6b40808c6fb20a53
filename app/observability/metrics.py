"""Prometheus metrics: HTTP figures of this process, job figures read from the database.

Job figures are computed at scrape time from the job table, so every API process reports the
same truth for the whole deployment, however many API and worker processes there are. HTTP
figures are this process's own; Prometheus sums them over the scraped processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import get_settings
from app.db import session_scope
from app.observability import repository
from app.orm import JobStatus
from app.quotas import repository as quotas_repo
from app.quotas import service as quotas

log = logging.getLogger(__name__)

TERMINAL = tuple(s for s in JobStatus if s.is_terminal)
# Unlearning jobs take seconds (a small model) to hours (a large one on a busy GPU).
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Any other method a client sends is counted as OTHER: label values stay a bounded set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"


class Metrics:
    """One app's registry (not the global default: tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nepenthe_http_requests",
            "HTTP requests answered, by route template",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nepenthe_http_request_duration_seconds",
            "time to answer an HTTP request",
            ["method", "route"],
            buckets=HTTP_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(JobCollector())

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type (the one that goes with this client version)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path: raw ids
    would make a time series per job. The routers carry their prefixes in their own paths."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class HttpMetricsMiddleware:
    """Counts and times every HTTP request (plain ASGI: it times streamed bodies to the end)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raises before it starts a response

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.observe(scope["method"], route_template(scope), status, elapsed)


class JobCollector:
    """Queue depth, running jobs, outcomes and durations, read from the database per scrape."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("nepenthe_database_up", "1 when the scrape could read the database")
        try:
            with session_scope(read_only=True) as session:
                counts = repository.status_counts(session)
                durations = repository.duration_histograms(session, TERMINAL, JOB_DURATION_BUCKETS)
                by_org = quotas_repo.jobs_by_org(session, [JobStatus.queued, JobStatus.running])
                stored = _stored_bytes(session)
        except (SQLAlchemyError, OSError) as exc:  # the scrape still answers, with up = 0
            log.warning("metrics: the database could not be read: %r", exc)
            up.add_metric([], 0)
            yield up
            yield from _quota_families({}, None)
            return
        up.add_metric([], 1)
        yield up
        yield from _job_families(counts, durations)
        yield from _org_families(by_org)
        yield from _quota_families(stored, by_org)


def _stored_bytes(session: Session) -> dict[str, int]:
    try:
        return quotas.stored_bytes(session)
    except (BotoCoreError, ClientError) as exc:  # the S3 store does not answer: left out
        log.warning("metrics: stored bytes could not be read from the store: %r", exc)
        return {}


def _org_families(by_org: dict[tuple[str, str], int]) -> Iterable[Metric]:
    """Per organisation (labelled by id, never by name: one series per organisation)."""
    for status in (JobStatus.queued, JobStatus.running):
        family = GaugeMetricFamily(
            f"nepenthe_org_jobs_{status.value}",
            f"{status.value} jobs of each organisation that has some",
            labels=["org"],
        )
        for (org, of_status), n in sorted(by_org.items()):
            if of_status == status:
                family.add_metric([org], n)
        yield family


def _quota_families(
    stored: dict[str, int], by_org: dict[tuple[str, str], int] | None
) -> Iterable[Metric]:
    settings = get_settings()
    if by_org is not None:
        stored_family = GaugeMetricFamily(
            "nepenthe_org_stored_bytes",
            "checkpoints, job artifacts and uploaded datasets each organisation stores",
            labels=["org"],
        )
        for org, n in sorted(stored.items()):
            stored_family.add_metric([org], n)
        yield stored_family
    refused = CounterMetricFamily(
        "nepenthe_quota_refusals",
        "requests this process refused for a quota, by organisation and reason",
        labels=["org", "reason"],
    )
    for (org, reason), n in sorted(quotas.refusals().items()):
        refused.add_metric([org, reason], n)
    yield refused
    limits = GaugeMetricFamily(
        "nepenthe_quota_limit",
        "each per-organisation limit as configured (0: none)",
        labels=["quota"],
    )
    for quota, value in (
        ("submissions_per_minute", settings.quota_submissions_per_minute),
        ("queued_jobs", settings.quota_queued_jobs),
        ("running_jobs", settings.quota_running_jobs),
        ("job_sample_passes", settings.quota_max_job_sample_passes),
        ("stored_bytes", settings.quota_stored_bytes),
        ("job_time_limit_seconds", settings.job_time_limit_s),
    ):
        limits.add_metric([quota], float(value))
    yield limits


def _job_families(
    counts: dict[str, int], durations: dict[str, tuple[list[int], int, float]]
) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "nepenthe_jobs_queued",
        "jobs waiting for a worker (queue depth)",
        value=counts.get(JobStatus.queued, 0),
    )
    yield GaugeMetricFamily(
        "nepenthe_jobs_running", "jobs a worker is running", value=counts.get(JobStatus.running, 0)
    )
    outcomes = CounterMetricFamily(
        "nepenthe_jobs_finished", "jobs that ended, by terminal status", labels=["status"]
    )
    histogram = HistogramMetricFamily(
        "nepenthe_job_duration_seconds",
        "run time of ended jobs (finished_at - started_at)",
        labels=["status"],
    )
    for status in TERMINAL:
        outcomes.add_metric([status.value], counts.get(status, 0))
        cumulative, count, total = durations.get(status, ([0] * len(JOB_DURATION_BUCKETS), 0, 0.0))
        buckets = [
            (floatToGoString(b), n) for b, n in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)
        ]
        histogram.add_metric([status.value], [*buckets, ("+Inf", count)], sum_value=total)
    yield outcomes
    yield histogram
