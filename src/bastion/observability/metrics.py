"""Prometheus metrics. Label values are bounded: route names and codes, never raw paths."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# A variable-length tuple type on purpose: compiled, a fixed-length tuple of floats is a C struct, and
# every bisect_left call would box it back into 14 new float objects and a tuple.
_BUCKETS: Final[tuple[float, ...]] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                      30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Per-request series are plain dicts, turned into Prometheus families only when /metrics is scraped:
        # prometheus_client's locked counters and histograms cost ~6 us per request in the gateway (measured).
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._upstream: dict[str, _Histogram] = {}
        self._rejections: dict[str, int] = {}
        self._policy_events: dict[tuple[str, str, str], int] = {}
        self.registry.register(_RequestCollector(self))
        self.upstream_healthy = Gauge("bastion_upstream_healthy_targets", "Targets currently available, "
                                      "by upstream.", ["upstream"], registry=self.registry)
        self.config_generation = Gauge("bastion_config_generation", "Generation of the configuration in "
                                       "use (increments on each successful reload).", registry=self.registry)
        self.reloads = Counter("bastion_config_reloads_total", "Reload attempts by result.", ["result"],
                               registry=self.registry)
        self.connections = Gauge("bastion_open_connections", "Open client connections, by listener.",
                                 ["listener"], registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = _Histogram()
        hist.observe(seconds)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        hist = self._upstream.get(upstream)
        if hist is None:
            hist = self._upstream[upstream] = _Histogram()
        hist.observe(seconds)

    def observe_rejection(self, code: str) -> None:
        self._rejections[code] = self._rejections.get(code, 0) + 1

    def observe_policy_event(self, policy: str, event: str, name: str) -> None:
        key = (policy, event, name)
        self._policy_events[key] = self._policy_events.get(key, 0) + 1


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class _RequestCollector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        requests = CounterMetricFamily("bastion_requests", "Requests answered, by route and status.",
                                       labels=["route", "status"])
        for (route, status), count in list(metrics._requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        yield _histogram_family("bastion_request_duration_seconds", "Time from end of request head to end "
                                "of response, by route.", "route", metrics._latency)
        yield _histogram_family("bastion_upstream_duration_seconds", "Time from sending the request upstream "
                                "to its response head, by upstream.", "upstream", metrics._upstream)
        rejections = CounterMetricFamily("bastion_rejections", "Requests the gateway answered itself, by "
                                         "error code.", labels=["code"])
        for code, count in list(metrics._rejections.items()):
            rejections.add_metric([code], count)
        yield rejections
        events = CounterMetricFamily("bastion_policy_events", "Policy events by policy, event and configured "
                                     "name (shadow refusals, fail-open decisions, flow refusals, ...).",
                                     labels=["policy", "event", "name"])
        for (policy, event, name), count in list(metrics._policy_events.items()):
            events.add_metric([policy, event, name], count)
        yield events


def _histogram_family(name: str, documentation: str, label: str,
                      series: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, hist in list(series.items()):
        family.add_metric([value], hist.buckets(), hist.sum)
    return family
