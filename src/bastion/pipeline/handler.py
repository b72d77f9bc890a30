"""Runs one request through the gateway: route, request policies, upstream, response policies."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from bastion.errors import codes
from bastion.errors.codes import ErrorCode
from bastion.observability.redaction import redact_query
from bastion.pipeline.compiled import CompiledConfig, CompiledRoute, IpNetwork
from bastion.pipeline.context import Headers, RequestContext, ResponseHead
from bastion.pipeline.policy import Reject
from bastion.proxy.cluster import Target, UpstreamCluster
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

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_DROP_RESPONSE = HOP_BY_HOP | LEAKY_RESPONSE | {b"x-request-id", b"strict-transport-security"}
_ERROR_FOR = {
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
        self._loop = asyncio.get_event_loop()

    # -- Handler protocol --------------------------------------------------------------------------
    def begin(self, ex: Exchange) -> None:
        config = self._holder.current  # the request pins this configuration for its whole life
        scratch = ex.scratch
        scratch["config"] = config
        if ex.path_error is not None:
            return
        match = config.router.match(ex.host, ex.method, ex.path)
        scratch["match"] = match
        if isinstance(match, Match):
            ex.max_body_bytes = match.target.max_body_bytes

    async def handle(self, ex: Exchange) -> None:
        scratch = ex.scratch
        config: CompiledConfig = scratch["config"]  # type: ignore[assignment]
        if config.trusted_proxies:
            self._apply_trusted_proxies(ex, config)
        if ex.path_error is not None:
            scratch["log_reason"] = ex.path_error
            ex.send_problem(codes.HTTP_PATH_INVALID)
            return
        match = scratch.get("match")
        if match is None:
            ex.send_problem(codes.ROUTE_NOT_FOUND)
            return
        if isinstance(match, MethodNotAllowed):
            ex.send_problem(codes.ROUTE_METHOD_NOT_ALLOWED,
                            headers=[(b"allow", ", ".join(match.allow).encode())])
            return
        assert isinstance(match, Match)
        route: CompiledRoute = match.target
        scratch["route"] = route.name
        if route.lifecycle.value == "retired":
            ex.send_problem(codes.ROUTE_RETIRED)
            return
        ctx = RequestContext(
            request_id=ex.request_id, client_ip=ex.client_ip, method=ex.method, path=ex.path,
            query=ex.query, host=ex.host, headers=Headers(ex.headers), tls=ex.tls, started=ex.started,
            route=route, path_params=match.params,
        )
        scratch["ctx"] = ctx
        for policy in route.request_policies:
            reject = await policy.on_request(ctx)
            if ex.response_started:
                return  # the server refused the request meanwhile (deadline, body limit)
            if reject is not None:
                self._reject(ex, ctx, reject)
                return
        await self._forward(ex, ctx, route, config)

    def finished(self, ex: Exchange) -> None:
        scratch = ex.scratch
        route = scratch.get("route")
        route_label = route if isinstance(route, str) else "-"
        duration = time.monotonic() - ex.started
        metrics = self._metrics
        metrics.observe_request(route_label, ex.status, duration)
        reject_code = scratch.get("reject_code")
        if isinstance(reject_code, str):
            metrics.observe_rejection(reject_code)
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
        })

    # -- helpers -----------------------------------------------------------------------------------
    def _reject(self, ex: Exchange, ctx: RequestContext, reject: Reject) -> None:
        if reject.log_reason:
            ex.scratch["log_reason"] = reject.log_reason
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reject.headers.items()]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in ctx.response_headers.items())
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

    async def _forward(self, ex: Exchange, ctx: RequestContext, route: CompiledRoute,
                       config: CompiledConfig) -> None:
        cluster = route.upstream
        upstream_cfg = cluster.config
        timeouts = upstream_cfg.timeouts
        ex.scratch["upstream"] = cluster.name
        retryable = ex.method in IDEMPOTENT and not ex.body_expected
        attempts = 1 + (upstream_cfg.retries.attempts if retryable else 0)
        deadline = self._loop.time() + timeouts.total
        cluster.retry_budget.record_request()
        tried: Target | None = None
        error: UpstreamError = UpstreamUnavailable("no healthy target")
        for attempt in range(attempts):
            if attempt and not cluster.retry_budget.try_acquire():
                break
            target = cluster.pick(exclude=tried)
            if target is None:
                break  # after a failed attempt, answer with that failure rather than "unavailable"
            tried = target
            reused = False
            exchange: _ProxyExchange | None = None
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                error = UpstreamTimeout("total timeout")
                break
            try:
                async with asyncio.timeout(remaining):
                    conn, reused = await target.pool.acquire(min(timeouts.connect, remaining))
                    if ex.client_gone:
                        target.pool.release(conn, reusable=True)
                        return
                    exchange = _ProxyExchange(ex, ctx, route, cluster, target, conn, self._metrics)
                    outcome = await exchange.run(self._upstream_head(ex, ctx, route, target, config),
                                                 timeouts.read)
            except TimeoutError:
                outcome = UpstreamTimeout("total timeout", before_response=not ex.response_started)
                if exchange is not None:
                    exchange.cancel()
            except UpstreamError as exc:
                outcome = exc
            if outcome is None or isinstance(outcome, _ClientGone):
                return
            error = outcome
            log.info("upstream %s target %s failed (request_id=%s): %s", cluster.name, target.url,
                     ex.request_id, outcome.reason)
            if not (isinstance(outcome, UpstreamConnectError) and reused):
                cluster.report_failure(target)  # a stale pooled connection says nothing of the target
            if ex.response_started or not outcome.before_response:
                if not ex.response_done:
                    ex.scratch["log_reason"] = outcome.reason  # the access log says why the response was cut
                    ex.abort()
                return
            if not (retryable and outcome.retryable_kind):
                break
        ex.scratch["log_reason"] = error.reason
        code = _ERROR_FOR.get(type(error), codes.UPSTREAM_CONNECT_FAILED)
        headers = [(b"retry-after", b"1")] if code is codes.UPSTREAM_UNAVAILABLE else None
        if not ex.response_started:
            ex.send_problem(code, headers=headers)

    def _upstream_head(self, ex: Exchange, ctx: RequestContext, route: CompiledRoute, target: Target,
                       config: CompiledConfig) -> bytes:
        path = ex.path
        if route.strip_prefix and path.startswith(route.strip_prefix):
            path = path[len(route.strip_prefix):] or "/"
        target_path = target.prefix + encode_path(path)
        if ex.query:
            target_path += "?" + ex.query
        lines = [f"{ex.method} {target_path} HTTP/1.1\r\n".encode("latin-1")]
        client_host = b""
        prior_xff = b""
        trusted_peer = bool(config.trusted_proxies) and self._is_trusted(ex.peer_ip, config)
        extra = ctx.upstream_headers
        drop = connection_tokens(ex.headers)
        for name, value in ex.headers:
            if name == b"host":
                client_host = value
                continue
            if name in HOP_BY_HOP or name in drop:
                continue
            if name in GATEWAY_SET_REQUEST:
                if name == b"x-forwarded-for" and trusted_peer:
                    prior_xff = prior_xff + b", " + value if prior_xff else value
                continue
            if extra and name.decode("latin-1") in extra:
                continue
            lines.append(name + b": " + value + b"\r\n")
        host = client_host if route.preserve_host else target.host_header.encode("latin-1")
        xff = (prior_xff + b", " if prior_xff else b"") + ex.peer_ip.encode("latin-1")
        lines.append(b"host: " + host + b"\r\n")
        lines.append(b"x-forwarded-for: " + xff + b"\r\n")
        lines.append(b"x-forwarded-proto: " + (b"https" if ex.tls else b"http") + b"\r\n")
        lines.append(b"x-forwarded-host: " + client_host + b"\r\n")
        lines.append(b"x-request-id: " + ex.request_id.encode("latin-1") + b"\r\n")
        for name_str, value_str in extra.items():
            lines.append(f"{name_str}: {value_str}\r\n".encode("latin-1"))
        if ex.content_length is not None:
            lines.append(b"content-length: " + str(ex.content_length).encode() + b"\r\n")
        elif ex.body_expected:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class _ProxyExchange:
    """One attempt: request to a pooled connection, response back to the client (a ResponseSink)."""

    __slots__ = ("_body_sent", "_chunked_up", "_done", "_masking", "_released", "_sent_at", "cluster", "conn",
                 "ctx", "ex", "metrics", "route", "target", "upstream_status")

    def __init__(self, ex: Exchange, ctx: RequestContext, route: CompiledRoute, cluster: UpstreamCluster,
                 target: Target, conn: UpstreamConnection, metrics: GatewayMetrics) -> None:
        self.ex = ex
        self.metrics = metrics
        self.ctx = ctx
        self.route = route
        self.cluster = cluster
        self.target = target
        self.conn = conn
        self._done: asyncio.Future[UpstreamError | None] = asyncio.get_running_loop().create_future()
        self._masking = False
        self._body_sent = not ex.body_expected
        self._chunked_up = ex.body_expected and ex.content_length is None
        self._sent_at = 0.0
        self._released = False
        self.upstream_status = 0

    def _release(self, reusable: bool) -> None:
        if not self._released:
            self._released = True
            if not reusable:
                self.conn.detach()
            self.target.pool.release(self.conn, reusable=reusable)

    async def run(self, head: bytes, read_timeout: float) -> UpstreamError | None:
        ex = self.ex
        ex.on_client_gone = self._client_gone
        self._sent_at = time.monotonic()
        self.conn.begin(self, head, body_allowed=not ex.head_only, read_timeout=read_timeout)
        if ex.body_expected:
            ex.set_body_sink(self._write_body, self._end_body)
        ex.add_producer_for(self._on_client_backpressure)
        try:
            return await self._done
        finally:
            ex.remove_producer_for(self._on_client_backpressure)
            ex.on_client_gone = None
            ex.clear_body_sink()

    def cancel(self) -> None:
        self._release(reusable=False)
        if not self._done.done():
            self._done.set_result(UpstreamTimeout("total timeout", before_response=not self.ex.response_started))

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
        elapsed = time.monotonic() - self._sent_at
        ex.scratch["upstream_status"] = status
        ex.scratch["upstream_ms"] = round(elapsed * 1000, 3)
        self.metrics.observe_upstream(self.cluster.name, elapsed)
        self.upstream_status = status
        if status in (502, 503, 504):
            self.cluster.report_failure(self.target)
        else:
            self.cluster.report_success(self.target)
        if ex.response_started:
            return
        if status >= 500 and self.route.mask_upstream_errors:
            self._masking = True
            ex.scratch["retry_after"] = next((v for n, v in headers if n == b"retry-after"), None)
            return
        drop = connection_tokens(headers)
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
        response = ResponseHead(status, Headers(kept))
        ctx = self.ctx
        for policy in self.route.response_policies:
            policy.on_response(ctx, response)
        for name_str, value_str in ctx.response_headers.items():
            response.headers.set(name_str, value_str)
        ex.start_response(response.status, response.headers.items, content_length=content_length)

    def on_response_body(self, chunk: bytes) -> None:
        if not self._masking:
            self.ex.write(chunk)

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
        if not self._done.done():
            self._done.set_result(None)

    def on_upstream_error(self, error: UpstreamError) -> None:
        self._release(reusable=False)
        if self._masking and not self.ex.response_started:
            self._masking = False
            self.ex.send_problem(codes.UPSTREAM_SERVER_ERROR, status=self.upstream_status)
            error = _ClientGone("answered")  # the client got its problem; nothing more to do
        if not self._done.done():
            self._done.set_result(error)

    def pause_request_body(self) -> None:
        self.ex.pause_body()

    def resume_request_body(self) -> None:
        self.ex.resume_body()

    def _client_gone(self) -> None:
        self._release(reusable=False)
        if not self._done.done():
            self._done.set_result(_ClientGone("client went away"))


def problem_for(error: UpstreamError) -> ErrorCode:
    return _ERROR_FOR.get(type(error), codes.UPSTREAM_CONNECT_FAILED)
