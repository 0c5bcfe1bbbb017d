"""Where the early-stopping policy gets its data: Prometheus's HTTP API, or the trainer's /metrics directly.

Prometheus: one instant query per series with a range selector (`finetune_train_loss{...}[1h]`) returns the raw
scraped samples with their scrape timestamps — no resampling, so nothing is invented between scrapes. Series
from one scrape share a timestamp, which joins loss, grad norm and optimizer step into step-indexed points.
Several scrapes of one step collapse to one point; several steps per scrape simply leave steps unobserved
(the policy reads a window of steps, not of points).

Direct scrape (no Prometheus in the cluster): the operator reads the Master pod's /metrics itself and keeps a
short in-memory window per job. Both raise MetricsUnavailableError on any failure: never a reason to stop.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from finetune_contract import names
from finetune_contract.records import StepRecord

SERIES = {
    "step": names.METRIC_STEP,
    "loss": names.METRIC_LOSS,
    "grad_norm": names.METRIC_GRAD_NORM,
    "learning_rate": names.METRIC_LEARNING_RATE,
    "total_steps": names.METRIC_TOTAL_STEPS,
}
TOKENS = names.METRIC_TOKENS + names.COUNTER_SUFFIX
MAX_BODY_BYTES = 32 * 1024 * 1024
"""Most an answer (a /metrics page, a Prometheus result) may be: a bigger one is a broken endpoint, not data."""


TOTAL_DEADLINE_FACTOR = 3
"""A whole answer must arrive within this many timeouts: the socket timeout bounds each read, not an endpoint that
trickles a byte just often enough to never trip it (a stuck proxy, a swapping Prometheus)."""
READ_CHUNK = 64 * 1024


def read_body(url: str, timeout_seconds: float, what: str) -> bytes:
    """The body of a GET, bounded in size and in total time; any failure to get a usable one is
    MetricsUnavailableError."""
    deadline = time.monotonic() + TOTAL_DEADLINE_FACTOR * timeout_seconds
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            while chunk := response.read1(READ_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise MetricsUnavailableError(f"{what}: answered more than {MAX_BODY_BYTES:,} bytes")
                if time.monotonic() > deadline:
                    limit = TOTAL_DEADLINE_FACTOR * timeout_seconds
                    raise MetricsUnavailableError(f"{what}: answered too slowly ({size:,} bytes in {limit:.1f}s)")
    except (OSError, urllib.error.URLError, ValueError) as error:
        raise MetricsUnavailableError(f"{what}: {error}") from error
    return b"".join(chunks)


@dataclass(frozen=True)
class MetricsSourceChoice:
    """Where a job's metrics are read: a Prometheus (the job's own, else the operator's), or the pod directly."""

    prometheus_url: str | None

    @property
    def unavailable_reason(self) -> str:
        """The MetricsUnavailable condition's reason when this source fails."""
        return "PrometheusUnavailable" if self.prometheus_url else "ScrapeFailed"


def choose_source(job_prometheus_url: str | None, operator_prometheus_url: str | None) -> MetricsSourceChoice:
    """The one place that decides: spec.metrics.prometheusUrl, else --prometheus-url, else a direct scrape."""
    return MetricsSourceChoice(job_prometheus_url or operator_prometheus_url or None)


class MetricsUnavailableError(RuntimeError):
    """The metrics could not be read (down, slow, malformed); the verdict is unknown, never stop."""


@dataclass(frozen=True)
class JobMetrics:
    """What one read of a job's metrics yields: per-step points plus the latest values for status."""

    points: list[StepRecord]
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    total_steps: int | None = None

    @property
    def latest(self) -> StepRecord | None:
        return max(self.points, key=lambda point: point.step) if self.points else None


def selector(namespace: str, name: str) -> str:
    return f'{{{names.LABEL_JOB}="{name}",{names.LABEL_NAMESPACE}="{namespace}"}}'


def join_points(samples: dict[str, list[tuple[float, float]]]) -> list[StepRecord]:
    """Join per-series (timestamp, value) samples on timestamp into points, one per optimizer step (latest)."""
    by_time: dict[float, dict[str, float]] = {}
    for key, values in samples.items():
        for timestamp, value in values:
            by_time.setdefault(round(timestamp, 3), {})[key] = value
    by_step: dict[int, StepRecord] = {}
    for timestamp in sorted(by_time):
        row = by_time[timestamp]
        step = row.get("step")
        if step is None or not math.isfinite(step) or step < 1:
            continue
        by_step[int(step)] = StepRecord(int(step), row.get("loss"), row.get("grad_norm"), timestamp)
    return [by_step[step] for step in sorted(by_step)]


@dataclass
class PrometheusSource:
    """Reads a job's series from the Prometheus HTTP API."""

    base_url: str
    timeout_seconds: float = 5.0
    lookback: str = "6h"

    def fetch(self, namespace: str, name: str) -> JobMetrics:
        labels = selector(namespace, name)
        samples = {key: self._raw(f"{series}{labels}[{self.lookback}]") for key, series in SERIES.items()}
        # irate: the last two samples. rate() over a window divides by the whole window early in a run.
        rate = self._raw(f"irate({TOKENS}{labels}[2m])", instant=True)
        last = {key: values[-1][1] for key, values in samples.items() if values}
        total = last.get("total_steps")
        return JobMetrics(
            points=join_points({key: samples[key] for key in ("step", "loss", "grad_norm")}),
            learning_rate=last.get("learning_rate"),
            tokens_per_second=rate[-1][1] if rate else None,
            total_steps=int(total) if total is not None and math.isfinite(total) else None,
        )

    def instant(self, query: str) -> float | None:
        """The value of an instant query's first series (None: no series)."""
        values = self._raw(query, instant=True)
        return values[-1][1] if values else None

    def eval_points(self, namespace: str, name: str) -> dict[int, float]:
        """Eval loss by the optimizer step it was scraped at (the gauge holds its value until the next eval)."""
        labels = selector(namespace, name)
        steps = self._raw(f"{names.METRIC_STEP}{labels}[{self.lookback}]")
        losses = self._raw(f"{names.METRIC_EVAL_LOSS}{labels}[{self.lookback}]")
        step_at = {round(timestamp, 3): value for timestamp, value in steps}
        out: dict[int, float] = {}
        previous: float | None = None
        for timestamp, value in losses:
            step = step_at.get(round(timestamp, 3))
            if step is not None and math.isfinite(step) and value != previous:
                out.setdefault(int(step), value)
            previous = value
        return out

    def _raw(self, query: str, instant: bool = False) -> list[tuple[float, float]]:
        """Samples of the first series the query returns, as (timestamp, value), oldest first."""
        url = f"{self.base_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        body = read_body(url, self.timeout_seconds, f"Prometheus at {self.base_url}")
        try:
            payload: dict[str, Any] = json.loads(body)
            if payload.get("status") != "success":
                raise MetricsUnavailableError(f"Prometheus query failed: {payload.get('error', payload)}")
            result = payload["data"]["result"]
            if not result:
                return []
            if instant and "value" in result[0]:
                timestamp, value = result[0]["value"]
                return [(float(timestamp), float(value))]
            return [(float(timestamp), float(value)) for timestamp, value in result[0].get("values", [])]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            # JSON that is not a Prometheus answer (a proxy's error page, another API): unreadable, never a verdict
            raise MetricsUnavailableError(
                f"Prometheus at {self.base_url} answered no query result: {error!r}"
            ) from error


@dataclass
class ScrapeSource:
    """Scrapes trainers' /metrics directly and keeps the last `window` points of each job in memory."""

    timeout_seconds: float = 5.0
    window: int = 2048
    _points: dict[tuple[str, str], deque[StepRecord]] = field(default_factory=dict)
    _tokens: dict[tuple[str, str], deque[tuple[float, float]]] = field(default_factory=dict)

    def fetch(self, namespace: str, name: str, url: str, now: float | None = None) -> JobMetrics:
        observed = time.time() if now is None else now
        values = self._scrape(url, namespace, name)
        key = (namespace, name)
        points = self._points.setdefault(key, deque(maxlen=self.window))
        step = values.get(SERIES["step"])
        if step is not None and step >= 1 and (not points or int(step) > points[-1].step):
            points.append(StepRecord(int(step), values.get(SERIES["loss"]), values.get(SERIES["grad_norm"]), observed))
        tokens = self._tokens.setdefault(key, deque(maxlen=64))
        if TOKENS in values:
            tokens.append((observed, values[TOKENS]))
        total = values.get(SERIES["total_steps"])
        return JobMetrics(
            points=list(points),
            learning_rate=values.get(SERIES["learning_rate"]),
            tokens_per_second=_rate(tokens),
            total_steps=int(total) if total is not None and math.isfinite(total) else None,
        )

    def forget(self, namespace: str, name: str) -> None:
        self._points.pop((namespace, name), None)
        self._tokens.pop((namespace, name), None)

    def _scrape(self, url: str, namespace: str, name: str) -> dict[str, float]:
        body = read_body(url, self.timeout_seconds, f"scraping {url}")
        try:
            text = body.decode()
        except UnicodeDecodeError as error:
            raise MetricsUnavailableError(f"malformed metrics at {url}: {error}") from error
        wanted = {names.LABEL_JOB: name, names.LABEL_NAMESPACE: namespace}
        values: dict[str, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if all(sample.labels.get(key) == value for key, value in wanted.items()):
                        values[sample.name] = float(sample.value)
        except (ValueError, TypeError, IndexError) as error:
            raise MetricsUnavailableError(f"malformed metrics at {url}: {error!r}") from error
        return values


def _rate(history: deque[tuple[float, float]]) -> float | None:
    if len(history) < 2:
        return None
    (start, first), (end, last) = history[0], history[-1]
    return (last - first) / (end - start) if end > start else None
