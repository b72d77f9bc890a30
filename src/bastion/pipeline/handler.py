"""Runs one request through the gateway: route, request policies, upstream, response policies."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from bastion.config.model import Lifecycle
from bastion.errors import codes
from bastion.errors.codes import ErrorCode
from bastion.observability.redaction import redact_query
from bastion.pipeline.compiled import CompiledConfig, CompiledRoute, IpNetwork
from bastion.pipeline.context import Headers, RequestContext, ResponseHead, field_name
from bastion.pipeline.mount import Mounts
from bastion.pipeline.policy import PENDING, Reject
from bastion.proxy.cluster import Target
from bastion.proxy.connection import UpstreamConnection
from bastion.proxy.errors import (
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bastion.proxy.headers import GATEWAY_SET_REQUEST, HOP_BY_HOP, LEAKY_RESPONSE, connection_tokens
from bastion.routing.path import encode_path
from bastion.routing.router import Match, MethodNotAllowed

if TYPE_CHECKING:
    from bastion.observability.access_log import AccessLog
    from bastion.observability.metrics import GatewayMetrics
    from bastion.server.http1 import Exchange

log = logging.getLogger("bastion.gateway")

_MISS: Final = object()
_MATCH_CACHE_SIZE: Final = 8192
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_REQUEST_ID_OK: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_NOT_FORWARDED: Final = HOP_BY_HOP | GATEWAY_SET_REQUEST  # the gateway sets these itself (host included)
_DROP_RESPONSE: Final = HOP_BY_HOP | LEAKY_RESPONSE | {b"x-request-id", b"strict-transport-security"}
_ERROR_FOR: Final = {
    UpstreamConnectError: codes.UPSTREAM_CONNECT_FAILED,
    UpstreamTimeout: codes.UPSTREAM_TIMEOUT,
    UpstreamBadResponse: codes.UPSTREAM_BAD_RESPONSE,
    UpstreamUnavailable: codes.UPSTREAM_UNAVAILABLE,
}


class ConfigHolder(Protocol):
    @property
    def current(self) -> CompiledConfig: ...


class _ClientGone(UpstreamError):
    pass


class GatewayHandler:
    """The data plane's request handler. Holds no per-request state."""

    def __init__(self, holder: ConfigHolder, metrics: GatewayMetrics, access_log: AccessLog | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._holder = holder
        self._metrics = metrics
        self._access_log = access_log
        self._clock = clock
        self._trusted_cache: dict[str, bool] = {}
        self._trusted_nets: tuple[IpNetwork, ...] = ()  # what the cache was computed for
        self.loop = asyncio.get_event_loop()
        self.metrics = metrics
        self._mounts: Mounts | None = None

    def mount(self, mounts: Mounts) -> None:
        """Serve these paths with the gateway's own applications instead of routing them."""
        self._mounts = mounts

    # -- Handler protocol --------------------------------------------------------------------------
    def begin(self, ex: Exchange) -> None:
        config = self._holder.current  # the request pins this configuration for its whole life
        scratch = ex.scratch
        scratch["config"] = config
        if ex.path_error is not None:
            return
        if self._mounts is not None and self._begin_mounted(ex):
            return
        key = (ex.host, ex.method, ex.path)
        cache = config.match_cache
        match = cache.get(key, _MISS)
        if match is _MISS:
            match = config.router.match(ex.host, ex.method, ex.path)
            if len(cache) >= _MATCH_CACHE_SIZE:
                cache.clear()
            cache[key] = match
        scratch["match"] = match
        if isinstance(match, Match):
            ex.max_body_bytes = match.target.max_body_bytes

    def _begin_mounted(self, ex: Exchange) -> bool:
        assert self._mounts is not None
        found = self._mounts.find(ex.path)
        if found is None:
            return False
        label, app = found
        scratch = ex.scratch
        scratch["mounted"] = app
        scratch["route"] = label
        config: CompiledConfig = scratch["config"]  # type: ignore[assignment]
        if config.trusted_proxies:
            self._apply_trusted_proxies(ex, config)
        app.begin(ex)
        return True

    def try_fast(self, ex: Exchange) -> bool:
        """Serve the request from the parser callback when nothing has to wait: every policy decides
        synchronously and an idle pooled upstream connection is at hand. A task per request costs more
        than the rest of a proxy hop (measured); anything that must wait continues in a task."""
        if self._mounts is not None and "mounted" in ex.scratch:
            return False  # a mounted application runs in a task
        ctx = self._prepare(ex)
        if ctx is None:
            return True  # answered (404, 405, 410, bad path)
        route = ctx.route
        assert route is not None
        policies = route.request_policies
        for index, policy in enumerate(policies):
            if policy.needs_body and ex.body_expected:
                self.loop.create_task(self._continue(ex, ctx, route, index))  # the body must be read first
                return True
            outcome = policy.try_sync(ctx)
            if outcome is PENDING:
                self.loop.create_task(self._continue(ex, ctx, route, index))
                return True
            if outcome is not None:
                assert isinstance(outcome, Reject)
                self._reject(ex, ctx, outcome)
                return True
        if not self._admit(ex, ctx, route):
            return True
        forwarding = _Forwarding(self, ex, ctx, route)
        if not forwarding.start_with_idle_connection():
            self.loop.create_task(forwarding.run())
        return True

    async def handle(self, ex: Exchange) -> None:
        if self._mounts is not None:
            app = ex.scratch.get("mounted")
            if app is not None:
                await app.handle(ex)  # type: ignore[attr-defined]
                return
        ctx = self._prepare(ex)
        if ctx is None:
            return
        assert ctx.route is not None
        await self._continue(ex, ctx, ctx.route, 0)

    async def _continue(self, ex: Exchange, ctx: RequestContext, route: CompiledRoute, first: int) -> None:
        policies = route.request_policies
        for index in range(first, len(policies)):
            policy = policies[index]
            if policy.needs_body and ctx.body is None and ex.body_expected:
                chunks = [chunk async for chunk in ex.iter_body()]
                if ex.response_started or ex.client_gone:
                    return
                ctx.body = b"".join(chunks)
            reject = await policy.on_request(ctx)
            if ex.response_started:
                return  # the server refused the request meanwhile (deadline, body limit)
            if reject is not None:
                self._reject(ex, ctx, reject)
                return
        if self._admit(ex, ctx, route):
            await _Forwarding(self, ex, ctx, route).run()

    def _admit(self, ex: Exchange, ctx: RequestContext, route: CompiledRoute) -> bool:
        """The upstream's bulkhead: a slot for the whole exchange, given back when it is over."""
        cluster = route.upstream
        if cluster.config.max_concurrent_requests is None:
            return True
        if not cluster.enter():
            ex.scratch["log_reason"] = f"upstream {cluster.name} at max_concurrent_requests"
            ex.send_problem(codes.UPSTREAM_BUSY, headers=[(b"retry-after", b"1")])
            return False
        ctx.on_finish(cluster.leave)
        return True

    def _prepare(self, ex: Exchange) -> RequestContext | None:
        """Routing outcomes that need no policy, then the request context (None: already answered)."""
        scratch = ex.scratch
        config: CompiledConfig = scratch["config"]  # type: ignore[assignment]
        if config.trusted_proxies:
            self._apply_trusted_proxies(ex, config)
        if ex.path_error is not None:
            scratch["log_reason"] = ex.path_error
            ex.send_problem(codes.HTTP_PATH_INVALID)
            return None
        match = scratch.get("match")
        if match is None:
            ex.send_problem(codes.ROUTE_NOT_FOUND)
            return None
        if isinstance(match, MethodNotAllowed):
            ex.send_problem(codes.ROUTE_METHOD_NOT_ALLOWED,
                            headers=[(b"allow", ", ".join(match.allow).encode())])
            return None
        assert isinstance(match, Match)
        route: CompiledRoute = match.target
        scratch["route"] = route.name
        if route.lifecycle is Lifecycle.RETIRED:
            ex.send_problem(codes.ROUTE_RETIRED)
            return None
        ctx = RequestContext(
            request_id=ex.request_id, client_ip=ex.client_ip, method=ex.method, path=ex.path,
            query=ex.query, host=ex.host, headers=Headers(ex.headers), tls=ex.tls, started=ex.started,
            route=route, path_params=match.params,
        )
        scratch["ctx"] = ctx
        return ctx

    def finished(self, ex: Exchange) -> None:
        scratch = ex.scratch
        ctx = scratch.get("ctx")
        events = None
        if isinstance(ctx, RequestContext):
            if ctx.cleanups:  # first: a slot must come back even if the bookkeeping below fails
                for cleanup in ctx.cleanups:
                    try:
                        cleanup()
                    except Exception:
                        log.exception("request cleanup failed (request_id=%s)", ex.request_id)
                ctx.cleanups = None
            events = ctx.events
        route = scratch.get("route")
        route_label = route if isinstance(route, str) else "-"
        duration = time.monotonic() - ex.started
        metrics = self._metrics
        metrics.observe_request(route_label, ex.status, duration)
        reject_code = scratch.get("reject_code")
        if isinstance(reject_code, str):
            metrics.observe_rejection(reject_code)
        if events:
            for policy, event, name in events:
                metrics.observe_policy_event(policy, event, name)
        access_log = self._access_log
        if access_log is None:
            return
        config = scratch.get("config")
        access_log.write({
            "time": round(time.time(), 3),
            "request_id": ex.request_id,
            "client": ex.client_ip,
            "peer": ex.peer_ip,
            "method": ex.method,
            "host": ex.host,
            "path": ex.path if ex.path_error is None else "-",
            "query": redact_query(ex.query),
            "route": route_label,
            "status": ex.status,
            "upstream_status": scratch.get("upstream_status"),
            "upstream": scratch.get("upstream"),
            "duration_ms": round(duration * 1000, 3),
            "upstream_ms": scratch.get("upstream_ms"),
            "bytes_in": ex.body_bytes,
            "bytes_out": ex.bytes_sent,
            "reject_code": reject_code,
            "reason": scratch.get("log_reason"),
            "tls": ex.tls,
            "config": config.generation if isinstance(config, CompiledConfig) else None,
            "events": [f"{p}:{e}:{n}" for p, e, n in events] if events else None,
        })

    # -- helpers -----------------------------------------------------------------------------------
    def _reject(self, ex: Exchange, ctx: RequestContext, reject: Reject) -> None:
        if reject.log_reason:
            ex.scratch["log_reason"] = reject.log_reason
        headers = [(field_name(k), v.encode("latin-1")) for k, v in reject.headers.items()]
        headers.extend((field_name(k), v.encode("latin-1")) for k, v in ctx.response_headers.items())
        ex.send_problem(reject.code, reject.detail, headers=headers)

    def _is_trusted(self, ip: str, config: CompiledConfig) -> bool:
        if config.trusted_proxies is not self._trusted_nets:
            # A reload may have changed the trusted proxies: verdicts for the old list no longer hold.
            self._trusted_nets = config.trusted_proxies
            self._trusted_cache.clear()
        cached = self._trusted_cache.get(ip)
        if cached is None:
            try:
                address = ipaddress.ip_address(ip)
                cached = any(address in net for net in config.trusted_proxies)
            except ValueError:
                cached = False
            if len(self._trusted_cache) > 4096:
                self._trusted_cache.clear()
            self._trusted_cache[ip] = cached
        return cached

    def _apply_trusted_proxies(self, ex: Exchange, config: CompiledConfig) -> None:
        """Walk X-Forwarded-For right to left past trusted proxies: the first other hop is the client."""
        if not self._is_trusted(ex.peer_ip, config):
            return
        chain: list[str] = []
        incoming_id: bytes | None = None
        for name, value in ex.headers:
            if name == b"x-forwarded-for":
                chain.extend(p.strip() for p in value.decode("latin-1").split(","))
            elif name == b"x-request-id":
                incoming_id = value
        for hop in reversed(chain):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage in the chain: stop at the last hop we could trust
            ex.client_ip = hop
            if not self._is_trusted(hop, config):
                break
        if incoming_id is not None and 0 < len(incoming_id) <= 128:
            text = incoming_id.decode("latin-1")
            if all(ch in _REQUEST_ID_OK for ch in text):
                ex.request_id = text

    def upstream_head(self, ex: Exchange, ctx: RequestContext, route: CompiledRoute, target: Target,
                      config: CompiledConfig) -> bytes:
        path = ex.path
        if route.strip_prefix and path.startswith(route.strip_prefix):
            path = path[len(route.strip_prefix):] or "/"
        target_path = target.prefix + encode_path(path)
        if ctx.query:
            target_path += "?" + ctx.query  # a policy may have rewritten it (e.g. clamped a page size)
        lines = [ex.method.encode("latin-1"), b" ", target_path.encode("latin-1"), b" HTTP/1.1\r\n"]
        client_host = b""
        prior_xff = b""
        extra = ctx.upstream_headers
        drop: frozenset[bytes] | set[bytes] = connection_tokens(ex.headers) if ex.has_connection_header \
            else frozenset()
        if ctx.strip_upstream_names:
            drop = drop | ctx.strip_upstream_names if drop else ctx.strip_upstream_names
        if extra:  # headers a policy sets replace the client's copies
            drop = {*drop, *(n.encode("latin-1") for n in extra)}
        for name, value in ex.headers:
            if name in _NOT_FORWARDED:
                if name == b"host":
                    client_host = value
                elif name == b"x-forwarded-for" and config.trusted_proxies and self._is_trusted(ex.peer_ip, config):
                    prior_xff = prior_xff + b", " + value if prior_xff else value
                continue
            if drop and name in drop:
                continue
            lines += (name, b": ", value, b"\r\n")
        host = client_host if route.preserve_host else target.host_header_bytes
        lines += (b"host: ", host, b"\r\nx-forwarded-for: ")
        if prior_xff:
            lines += (prior_xff, b", ")
        lines += (ex.peer_ip.encode("latin-1"),
                  b"\r\nx-forwarded-proto: https\r\n" if ex.tls else b"\r\nx-forwarded-proto: http\r\n",
                  b"x-forwarded-host: ", client_host, b"\r\nx-request-id: ", ex.request_id.encode("latin-1"),
                  b"\r\n")
        for name_str, value_str in extra.items():
            lines.append(f"{name_str}: {value_str}\r\n".encode("latin-1"))
        if ctx.upstream_lines:
            lines.append(ctx.upstream_lines)
        if ctx.body is not None:
            lines += (b"content-length: ", str(len(ctx.body)).encode(), b"\r\n")
        elif ex.content_length is not None:
            lines += (b"content-length: ", str(ex.content_length).encode(), b"\r\n")
        elif ex.body_expected:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class _Forwarding:
    """One request's way upstream: attempts, retries within the budget, the total deadline."""

    __slots__ = ("attempt", "attempts", "cluster", "config", "ctx", "deadline", "error", "ex", "first_target",
                 "handler", "retryable", "route", "tried", "waiter")

    def __init__(self, handler: GatewayHandler, ex: Exchange, ctx: RequestContext, route: CompiledRoute) -> None:
        self.handler = handler
        self.ex = ex
        self.ctx = ctx
        self.route = route
        self.config: CompiledConfig = ex.scratch["config"]  # type: ignore[assignment]
        cluster = self.cluster = route.upstream
        upstream_cfg = cluster.config
        ex.scratch["upstream"] = cluster.name
        self.retryable = ex.method in IDEMPOTENT and not ex.body_expected
        self.attempts = 1 + (upstream_cfg.retries.attempts if self.retryable else 0)
        self.attempt = 0
        self.deadline = handler.loop.time() + upstream_cfg.timeouts.total
        self.tried: Target | None = None
        self.error: UpstreamError | None = None  # the last failure; none yet: no healthy target
        self.waiter: asyncio.Future[tuple[UpstreamError | None, bool]] | None = None
        self.first_target: Target | None = None  # balanced already, when the fast path found no idle connection
        cluster.retry_budget.record_request()

    def _exchange(self, target: Target, conn: UpstreamConnection, reused: bool) -> _ProxyExchange:
        handler = self.handler
        return _ProxyExchange(self, target, conn, reused, handler.metrics)

    def start_with_idle_connection(self) -> bool:
        """First attempt on an idle pooled connection, with no task; False when one must be opened."""
        target = self.cluster.pick(None)
        if target is None:
            return False
        conn = target.pool.try_acquire_idle()
        if conn is None:
            self.first_target = target  # keep the balancer's choice for the attempt that connects
            return False
        self.attempt = 1
        self.tried = target
        self._exchange(target, conn, True).start()
        return True

    def attempt_done(self, outcome: UpstreamError | None, target: Target, reused: bool) -> None:
        """Every attempt ends here (synchronously, from connection callbacks)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result((outcome, reused))
            return
        if self._settle(outcome, target, reused):
            self.handler.loop.create_task(self.run())  # a retry may need to connect: continue in a task

    def _settle(self, outcome: UpstreamError | None, target: Target, reused: bool) -> bool:
        """Account for one failed or finished attempt. True when another attempt should follow."""
        if outcome is None or isinstance(outcome, _ClientGone):
            return False
        ex = self.ex
        cluster = self.cluster
        self.error = outcome
        log.info("upstream %s target %s failed (request_id=%s): %s", cluster.name, target.url,
                 ex.request_id, outcome.reason)
        if not (isinstance(outcome, UpstreamConnectError) and reused):
            cluster.report_failure(target)  # a stale pooled connection says nothing of the target
        if ex.response_started or not outcome.before_response:
            if not ex.response_done:
                ex.scratch["log_reason"] = outcome.reason  # the access log says why the response was cut
                ex.abort()
            return False
        if self.attempt < self.attempts and self.retryable and outcome.retryable_kind:
            return True
        self._answer_error()
        return False

    def _answer_error(self) -> None:
        ex = self.ex
        if ex.response_started:
            return
        error = self.error or UpstreamUnavailable("no healthy target")
        ex.scratch["log_reason"] = error.reason
        code = _ERROR_FOR.get(type(error), codes.UPSTREAM_CONNECT_FAILED)
        headers = [(b"retry-after", b"1")] if code is codes.UPSTREAM_UNAVAILABLE else None
        ex.send_problem(code, headers=headers)

    async def run(self) -> None:
        """Attempts that may need to open connections or wait for a pooled one."""
        ex = self.ex
        cluster = self.cluster
        loop = self.handler.loop
        timeouts = cluster.config.timeouts
        while self.attempt < self.attempts:
            if self.attempt and not cluster.retry_budget.try_acquire():
                break
            target = self.first_target or cluster.pick(exclude=self.tried)
            self.first_target = None
            if target is None:
                break  # after a failed attempt, answer with that failure rather than "unavailable"
            self.attempt += 1
            self.tried = target
            remaining = self.deadline - loop.time()
            if remaining <= 0:
                self.error = UpstreamTimeout("total timeout")
                break
            try:
                conn, reused = await target.pool.acquire(min(timeouts.connect, remaining))
            except UpstreamError as exc:
                if self._settle(exc, target, False):
                    continue
                return
            if ex.client_gone:
                target.pool.release(conn, reusable=True)
                return
            waiter: asyncio.Future[tuple[UpstreamError | None, bool]] = loop.create_future()
            self.waiter = waiter
            self._exchange(target, conn, reused).start()
            outcome, reused = await waiter
            if not self._settle(outcome, target, reused):
                return
        self._answer_error()


class _ProxyExchange:
    """One attempt: request to a pooled connection, response back to the client (a ResponseSink).

    Driven by callbacks only; the end of the attempt is reported to its ``_Forwarding``."""

    __slots__ = ("_body_sent", "_chunked_up", "_finished", "_masking", "_released", "_remaining", "_sent_at", "conn",
                 "ex", "forwarding", "metrics", "reused", "target", "upstream_status")

    def __init__(self, forwarding: _Forwarding, target: Target, conn: UpstreamConnection, reused: bool,
                 metrics: GatewayMetrics) -> None:
        ex = forwarding.ex
        self.forwarding = forwarding
        self.ex = ex
        self.metrics = metrics
        self.target = target
        self.conn = conn
        self.reused = reused
        self._finished = False
        self._masking = False
        self._body_sent = not ex.body_expected
        self._chunked_up = ex.body_expected and ex.content_length is None and forwarding.ctx.body is None
        self._sent_at = 0.0
        self._released = False
        self._remaining: int | None = None  # response bytes still allowed under max_response_bytes
        self.upstream_status = 0

    def start(self) -> None:
        forwarding = self.forwarding
        ex = self.ex
        handler = forwarding.handler
        ex.on_client_gone = self._client_gone
        self._sent_at = handler.loop.time()
        head = handler.upstream_head(ex, forwarding.ctx, forwarding.route, self.target, forwarding.config)
        self.conn.begin(self, head, body_allowed=not ex.head_only,
                        read_timeout=forwarding.cluster.config.timeouts.read, deadline=forwarding.deadline)
        body = forwarding.ctx.body
        if body is not None:
            self.conn.write(body)  # read whole for a policy: sent as it is now, with its own length
            self._body_sent = True
        elif ex.body_expected:
            ex.set_body_sink(self._write_body, self._end_body)
        ex.add_producer_for(self._on_client_backpressure)

    def _finish(self, outcome: UpstreamError | None) -> None:
        if self._finished:
            return
        self._finished = True
        ex = self.ex
        ex.remove_producer_for(self._on_client_backpressure)
        ex.on_client_gone = None
        ex.clear_body_sink()
        self.forwarding.attempt_done(outcome, self.target, self.reused)

    def _release(self, reusable: bool) -> None:
        if not self._released:
            self._released = True
            if not reusable:
                self.conn.detach()
            self.target.pool.release(self.conn, reusable=reusable)

    # -- request body ------------------------------------------------------------------------------
    def _write_body(self, chunk: bytes) -> None:
        if self._chunked_up:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        self.conn.write(chunk)

    def _end_body(self) -> None:
        if self._chunked_up:
            self.conn.write(b"0\r\n\r\n")
        self._body_sent = True

    def _on_client_backpressure(self, paused: bool) -> None:
        if paused:
            self.conn.pause_reading()
        else:
            self.conn.resume_reading()

    # -- ResponseSink ------------------------------------------------------------------------------
    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], close_delimited: bool) -> None:
        ex = self.ex
        forwarding = self.forwarding
        cluster = forwarding.cluster
        elapsed = forwarding.handler.loop.time() - self._sent_at
        scratch = ex.scratch
        scratch["upstream_status"] = status
        scratch["upstream_ms"] = round(elapsed * 1000, 3)
        self.metrics.observe_upstream(cluster.name, elapsed)
        self.upstream_status = status
        if status in (502, 503, 504):
            cluster.report_failure(self.target)
        else:
            cluster.report_success(self.target)
        if ex.response_started:
            return
        route = forwarding.route
        if status >= 500 and route.mask_upstream_errors:
            self._masking = True
            scratch["retry_after"] = next((v for n, v in headers if n == b"retry-after"), None)
            return
        drop = connection_tokens(headers) if self.conn.saw_connection_header else frozenset()
        content_length: int | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b"content-length":
                if value.isdigit():
                    content_length = int(value)
                continue
            if name in _DROP_RESPONSE or name in drop:
                continue
            kept.append((name, value))
        if close_delimited:
            content_length = None
        cap = cluster.config.max_response_bytes
        if cap is not None:
            if content_length is not None and content_length > cap:
                self._refuse_oversize(f"upstream declared {content_length} bytes, over max_response_bytes")
                return
            self._remaining = cap
        policies = route.response_policies
        ctx = forwarding.ctx
        if policies or ctx.response_headers:
            response = ResponseHead(status, Headers(kept))
            for policy in policies:
                policy.on_response(ctx, response)
            if ctx.response_headers:
                response.headers.set_all(ctx.response_headers)
            status = response.status
            kept = response.headers.items
        ex.start_response(status, kept, content_length=content_length)

    def on_response_body(self, chunk: bytes) -> None:
        if self._masking or self._finished:
            return
        if self._remaining is not None:
            self._remaining -= len(chunk)
            if self._remaining < 0:
                self._refuse_oversize("upstream response streamed past max_response_bytes")
                return
        self.ex.write(chunk)

    def _refuse_oversize(self, reason: str) -> None:
        ex = self.ex
        self._release(reusable=False)
        ex.scratch["log_reason"] = reason
        if ex.response_started:
            ex.abort()  # part of it is out: the client must see a cut, not a complete-looking body
        else:
            ex.send_problem(codes.UPSTREAM_RESPONSE_TOO_LARGE)
        self._finish(_ClientGone("answered"))

    def on_response_complete(self) -> None:
        ex = self.ex
        self._release(reusable=self._body_sent)
        if self._masking:
            retry_after = ex.scratch.get("retry_after")
            headers = [(b"retry-after", retry_after)] if isinstance(retry_after, bytes) else None
            ex.scratch["log_reason"] = f"upstream answered {self.upstream_status}"
            ex.send_problem(codes.UPSTREAM_SERVER_ERROR, headers=headers, status=self.upstream_status)
        elif not ex.response_done:
            ex.end()
        self._finish(None)

    def on_upstream_error(self, error: UpstreamError) -> None:
        self._release(reusable=False)
        if self._masking and not self.ex.response_started:
            self._masking = False
            self.ex.send_problem(codes.UPSTREAM_SERVER_ERROR, status=self.upstream_status)
            error = _ClientGone("answered")  # the client got its problem; nothing more to do
        self._finish(error)

    def pause_request_body(self) -> None:
        self.ex.pause_body()

    def resume_request_body(self) -> None:
        self.ex.resume_body()

    def _client_gone(self) -> None:
        self._release(reusable=False)
        self._finish(_ClientGone("client went away"))


def problem_for(error: UpstreamError) -> ErrorCode:
    return _ERROR_FOR.get(type(error), codes.UPSTREAM_CONNECT_FAILED)
