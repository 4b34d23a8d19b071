"""The gateway's Prometheus metrics: what they are, and the small objects requests record through.

Every metric and its labels (``docs/operations.md`` has the reference table):

=======================================  =========  ===========================================
``gatehouse_requests_total``             counter    ``route``, ``method``, ``status``
``gatehouse_request_duration_seconds``   histogram  ``route``
``gatehouse_requests_in_flight``         gauge      ``route``
``gatehouse_upstream_duration_seconds``  histogram  ``upstream``
``gatehouse_upstream_errors_total``      counter    ``upstream``, ``reason``
``gatehouse_streams_active``             gauge      ``route``
``gatehouse_stream_first_event_seconds`` histogram  ``route``
``gatehouse_session_refreshes_total``    counter    ``result``
``gatehouse_rate_limited_total``         counter    ``route``
``gatehouse_redis_errors_total``         counter    ``op``
=======================================  =========  ===========================================

Every label value comes from a fixed set the gateway owns: a route's name, a method among
`METHODS` (any other is ``other``), a status code, an upstream among `UPSTREAMS`, a reason among
`REASONS`, a refresh result among `REFRESH_RESULTS`, a Redis operation's name. Never a user, a
path, a query or a token: the number of series is bounded whatever the traffic.

The request path records through objects made once per label set and cached (`RouteMeter` per
route, `UpstreamMeter` per upstream, a counter child per method and status): a request costs a
few dictionary lookups and additions, no label handling.

Kept in memory (`GatewayMetrics.in_memory`: one process) or in files shared by the worker
processes (`GatewayMetrics.in_files`, ``ops/metrics_files.py``): ``prometheus_client`` chooses
which when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``. So this module, which imports
it, is imported only once ``server.main`` has set or cleared that variable. The gauges are
``livesum``: with workers, the sum over the live ones.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["METHODS", "REASONS", "REFRESH_RESULTS", "UPSTREAMS", "GatewayMetrics", "RouteMeter", "UpstreamMeter"]

METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OTHER_METHOD: Final = "other"
UPSTREAMS: Final = ("backend", "dify", "refresh", "supabase")
REASONS: Final = ("connect", "timeout", "reset", "protocol", "status")
REFRESH_RESULTS: Final = ("ok", "rejected", "unavailable", "shared")

# Requests include streams that last minutes; upstream headers and first events come sooner.
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UPSTREAM_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FIRST_EVENT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)


class GatewayMetrics:
    """One process's metrics. ``registry``: where they are registered for an in-memory
    exposition; None when they live in files (each scrape reads those).

    The recording methods (`refresh_result`, `redis_error`) fit the lower layers' hooks
    (``Refresher.on_result``, ``RedisLink.on_error``) as they are.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry
        self.requests = Counter(
            "gatehouse_requests",
            "Requests answered (or abandoned by their client: status 499), by route, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "gatehouse_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (a stream's included).",
            ("route",),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gatehouse_requests_in_flight",
            "Requests being served now.",
            ("route",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gatehouse_upstream_duration_seconds",
            "Time from sending a request upstream to the upstream's response headers.",
            ("upstream",),
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gatehouse_upstream_errors",
            "Upstream calls that failed: connect, timeout, reset, protocol (a malformed answer), "
            "status (an answer of 500 or more).",
            ("upstream", "reason"),
            registry=registry,
        )
        self.streams_active = Gauge(
            "gatehouse_streams_active",
            "Server-Sent Events answers being relayed now.",
            ("route",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.stream_first_event = Histogram(
            "gatehouse_stream_first_event_seconds",
            "Time from a request's arrival to the first event of its event stream.",
            ("route",),
            buckets=FIRST_EVENT_BUCKETS,
            registry=registry,
        )
        self.session_refreshes = Counter(
            "gatehouse_session_refreshes",
            "Requests that needed a session refresh, by how they were served: ok (their own call), "
            "shared (another request's refresh, in this process or another), rejected, unavailable.",
            ("result",),
            registry=registry,
        )
        self.rate_limited = Counter(
            "gatehouse_rate_limited", "Requests refused by a rate limit (429).", ("route",), registry=registry
        )
        self.redis_errors = Counter(
            "gatehouse_redis_errors",
            "Redis operations that got no answer (failed, timed out, or skipped while Redis is down).",
            ("op",),
            registry=registry,
        )
        self._routes: dict[str, RouteMeter] = {}
        self._upstreams: dict[str, UpstreamMeter] = {}
        self._refreshes = {result: self.session_refreshes.labels(result) for result in REFRESH_RESULTS}
        self._redis: dict[str, Counter] = {}

    @classmethod
    def in_memory(cls) -> GatewayMetrics:
        """Metrics of this process alone, in a registry of their own (never the global one)."""
        # Files carry no creation times: without them here too, one process and several expose
        # the same series.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        return cls(CollectorRegistry(auto_describe=True))

    @classmethod
    def in_files(cls) -> GatewayMetrics:
        """Metrics written to this worker's files in ``PROMETHEUS_MULTIPROC_DIR``."""
        return cls(None)

    def route(self, route: str) -> RouteMeter:
        meter = self._routes.get(route)
        if meter is None:
            meter = self._routes[route] = RouteMeter(self, route)
        return meter

    def upstream(self, name: str) -> UpstreamMeter:
        """The meter of one of `UPSTREAMS`; its error series exist (at 0) from here on."""
        meter = self._upstreams.get(name)
        if meter is None:
            meter = self._upstreams[name] = UpstreamMeter(self, name)
        return meter

    def refresh_result(self, result: str) -> None:
        """``Refresher.on_result``: one of `REFRESH_RESULTS`."""
        self._refreshes[result].inc()

    def redis_error(self, op: str) -> None:
        """``RedisLink.on_error``: ``op`` is one of the link's fixed operation names."""
        child = self._redis.get(op)
        if child is None:
            child = self._redis[op] = self.redis_errors.labels(op)
        child.inc()


class RouteMeter:
    """The metrics of one route. `started` and `finished` bracket every request, once each."""

    __slots__ = ("_first_event", "_metrics", "_rate_limited", "_requests", "_streams", "duration", "in_flight", "route")

    def __init__(self, metrics: GatewayMetrics, route: str) -> None:
        self.route = route
        self._metrics = metrics
        self.in_flight = metrics.in_flight.labels(route)
        self.duration = metrics.request_duration.labels(route)
        self._requests: dict[tuple[str, int], Counter] = {}
        # Made on first use: a route that never streams or limits shows no such series.
        self._streams: Gauge | None = None
        self._first_event: Histogram | None = None
        self._rate_limited: Counter | None = None

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, method: str, status: int, seconds: float, rate_limited: bool) -> None:
        self.in_flight.dec()
        self.duration.observe(seconds)
        if method not in METHODS:
            method = OTHER_METHOD  # before the cache: a client's made-up methods are one key
        child = self._requests.get((method, status))
        if child is None:
            child = self._requests[(method, status)] = self._metrics.requests.labels(self.route, method, str(status))
        child.inc()
        if rate_limited:
            if self._rate_limited is None:
                self._rate_limited = self._metrics.rate_limited.labels(self.route)
            self._rate_limited.inc()

    def stream_started(self) -> None:
        if self._streams is None:
            self._streams = self._metrics.streams_active.labels(self.route)
        self._streams.inc()

    def stream_ended(self) -> None:
        assert self._streams is not None  # started before
        self._streams.dec()

    def first_event(self, seconds: float) -> None:
        if self._first_event is None:
            self._first_event = self._metrics.stream_first_event.labels(self.route)
        self._first_event.observe(seconds)


class UpstreamMeter:
    """The metrics of one upstream. It is what ``upstream.client.CallObserver`` asks for, so an
    observed client reports to it directly; a relay's result is reported the same way."""

    __slots__ = ("_errors", "duration")

    def __init__(self, metrics: GatewayMetrics, name: str) -> None:
        self.duration = metrics.upstream_duration.labels(name)
        self._errors = {reason: metrics.upstream_errors.labels(name, reason) for reason in REASONS}

    def answered(self, seconds: float, status: int) -> None:
        """The upstream's response headers came ``seconds`` after the request was sent."""
        self.duration.observe(seconds)
        if status >= 500:
            self._errors["status"].inc()

    def failed(self, reason: str) -> None:
        """The call failed: ``connect``, ``timeout``, ``reset`` or ``protocol``."""
        self._errors[reason].inc()

    def relayed(self, seconds: float | None, status: int | None, failure: str | None) -> None:
        """One relayed call, from end to end: the time to its response headers when they came
        (`answered`), and at most one error. An answer of 500 or more is that error (``status``),
        whatever then became of its body (a reset after a 5xx head is still one failed call);
        else ``failure``, the upstream's failure if it failed."""
        if seconds is not None and status is not None:
            self.answered(seconds, status)
            if status >= 500:
                return
        if failure is not None:
            self.failed(failure)
