"""Prometheus metrics. Label values are bounded: route names and codes, never raw paths."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("bastion_requests_total", "Requests answered, by route and status.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("bastion_request_duration_seconds", "Time from end of request head to "
                                 "end of response, by route.", ["route"], buckets=_BUCKETS,
                                 registry=self.registry)
        self.upstream_latency = Histogram("bastion_upstream_duration_seconds", "Time from sending the "
                                          "request upstream to its response head, by upstream.",
                                          ["upstream"], buckets=_BUCKETS, registry=self.registry)
        self.rejections = Counter("bastion_rejections_total", "Requests the gateway answered itself, by "
                                  "error code.", ["code"], registry=self.registry)
        self.upstream_healthy = Gauge("bastion_upstream_healthy_targets", "Targets currently available, "
                                      "by upstream.", ["upstream"], registry=self.registry)
        self.config_generation = Gauge("bastion_config_generation", "Generation of the configuration in "
                                       "use (increments on each successful reload).", registry=self.registry)
        self.reloads = Counter("bastion_config_reloads_total", "Reload attempts by result.", ["result"],
                               registry=self.registry)
        self.connections = Gauge("bastion_open_connections", "Open client connections, by listener.",
                                 ["listener"], registry=self.registry)
        # Child lookups by label cost microseconds; cache them (the label sets are bounded).
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._upstream_children: dict[str, Histogram] = {}
        self._rejection_children: dict[str, Counter] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(route, str(status))
        counter.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency_children[route] = self.latency.labels(route)
        hist.observe(seconds)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        hist = self._upstream_children.get(upstream)
        if hist is None:
            hist = self._upstream_children[upstream] = self.upstream_latency.labels(upstream)
        hist.observe(seconds)

    def observe_rejection(self, code: str) -> None:
        counter = self._rejection_children.get(code)
        if counter is None:
            counter = self._rejection_children[code] = self.rejections.labels(code)
        counter.inc()
