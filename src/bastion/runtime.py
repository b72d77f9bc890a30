"""Composition root: reads the configuration, builds stores, handlers and listeners, swaps configs."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bastion.admin.app import AdminServices, ReloadResult, create_admin_app
from bastion.admin.services import OAuthAdmin
from bastion.config.loader import ConfigError, ConfigIssue, load_config
from bastion.config.model import GatewayConfig, Limits, UpstreamConfig
from bastion.identity.service import IdentityService, identity_settings
from bastion.oauth.components import OAuthComponents
from bastion.observability.access_log import AccessLog
from bastion.observability.metrics import GatewayMetrics
from bastion.pipeline.compiled import CompiledConfig
from bastion.pipeline.compiler import load_and_compile
from bastion.pipeline.handler import GatewayHandler
from bastion.pipeline.mount import Mounts
from bastion.pipeline.policy import PolicyServices
from bastion.policies import builtin_policy_types
from bastion.policies.concurrency.policy import SlotTables
from bastion.policies.failed_auth import FailedAuthBrake
from bastion.proxy.cluster import UpstreamCluster
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStore, RedisCounterStore
from bastion.server.asgi import AsgiHandler
from bastion.server.http1 import Exchange, Handler, Listener
from bastion.server.redirect import RedirectHandler
from bastion.server.tls import TlsConfigError, build_server_context, ensure_self_signed, reload_certificate

log = logging.getLogger("bastion")

LISTENER_NAMES = ("https", "http", "admin")


def inherited_sockets() -> dict[str, socket.socket]:
    """Listening sockets passed in by a supervisor, by listener name (https, http, admin).

    Two forms: systemd socket activation (LISTEN_FDS with LISTEN_FDNAMES, descriptors from 3), and
    BASTION_LISTEN_FDS="https=7,admin=9" for any other supervisor. Tests use the second: they bind
    first, then start the gateway, so no other process can take a port in between.
    """
    pairs: list[tuple[str, int]] = []
    named = os.environ.pop("BASTION_LISTEN_FDS", "")
    for item in filter(None, named.split(",")):
        name, _, fd_text = item.partition("=")
        pairs.append((name.strip(), int(fd_text)))
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    pid = os.environ.get("LISTEN_PID")
    if count > 0 and (not pid or pid == str(os.getpid())):
        names = os.environ.get("LISTEN_FDNAMES", "").split(":")
        for index in range(count):
            pairs.append((names[index] if index < len(names) else f"fd{index}", 3 + index))
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    sockets: dict[str, socket.socket] = {}
    for name, fd in pairs:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets[name] = sock
    return sockets


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass(slots=True)
class _Listening:
    listener: Listener
    server: asyncio.AbstractServer
    sock: socket.socket


class Runtime:
    def __init__(self, config_path: str | os.PathLike[str]) -> None:
        self.config_path = Path(config_path).resolve()
        self.loop = asyncio.get_running_loop()
        self.metrics = GatewayMetrics()
        self._generation = 0
        self._current: CompiledConfig | None = None
        self._clusters: dict[str, UpstreamCluster] = {}
        self._policy_types = builtin_policy_types()
        self._services = PolicyServices(clock=time.monotonic)
        self._listening: dict[str, _Listening] = {}
        self._tls_context: ssl.SSLContext | None = None
        self._tls_files: tuple[str, str] | None = None
        self._access_log: AccessLog | None = None
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[ReloadResult]] = set()
        self._identity: IdentityService | None = None
        self._identity_source: tuple[object, ...] = ()
        self._counters: CounterStore | None = None
        self._oauth: OAuthComponents | None = None
        self._slots = SlotTables()  # in-flight counts survive reloads, like the counters
        self.started_at = time.time()

    # -- configuration -----------------------------------------------------------------------------
    @property
    def current(self) -> CompiledConfig:
        assert self._current is not None
        return self._current

    def _cluster_for(self, name: str, config: UpstreamConfig) -> UpstreamCluster:
        existing = self._clusters.get(name)
        if existing is not None and existing.config == config:
            return existing  # unchanged upstreams keep their pools and health state across reloads
        return UpstreamCluster(name, config, self.loop)

    def _compile(self) -> CompiledConfig:
        compiled = load_and_compile(self.config_path, generation=self._generation + 1,
                                    registry=self._policy_types, services=self._services,
                                    clusters=self._cluster_for)
        shadowed = self._oauth.shadowed([r.template for r in compiled.routes]) if self._oauth else []
        if shadowed:
            raise ConfigError([ConfigIssue(str(self.config_path), None, "apis", f"route {t!r} is hidden by the "
                                           "built-in authorization server's endpoints") for t in shadowed])
        return compiled

    def _install(self, compiled: CompiledConfig) -> None:
        old_clusters = self._clusters
        self._generation = compiled.generation
        self._current = compiled  # atomic: requests in flight keep the config they pinned
        self._clusters = dict(compiled.clusters)
        for cluster in self._clusters.values():
            cluster.start()
        kept = {id(c) for c in self._clusters.values()}
        for cluster in old_clusters.values():
            if id(cluster) not in kept:
                cluster.close()  # idle connections close now; busy ones are discarded when released
        self.metrics.config_generation.set(compiled.generation)

    async def load_initial(self) -> CompiledConfig:
        """Read the configuration, open the stores it names, then compile and install it."""
        try:
            config, _ = load_config(self.config_path)
        except ConfigError:
            self._services = PolicyServices(clock=time.monotonic, extras={"check_only": True})
            self._compile()  # reports every problem of the file, not only the structural ones
            raise
        self._identity = IdentityService(identity_settings(config, self.config_path.parent))
        await self._identity.prepare()
        self._identity_source = (config.store, config.keys.pepper, config.redis, config.redis_timeout)
        if config.redis:
            redis_url = self._identity.settings.redis_url or ""
            self._counters = RedisCounterStore(redis_url, deadline=config.redis_timeout)
        else:
            self._counters = MemoryCounterStore()
        self._oauth = OAuthComponents(self._identity, self._counters, self._docs_base, self.config_path.parent)
        try:
            await self._oauth.open(config)
        except BaseException:
            await self._oauth.close()
            raise
        self._services = PolicyServices(clock=time.monotonic, extras={
            "key_authenticator": self._identity.authenticator, "counters": self._counters,
            "concurrency_slots": self._slots, "wall_clock": time.time, **self._oauth.extras()})
        compiled = self._compile()
        self._install(compiled)
        return compiled

    @property
    def identity(self) -> IdentityService:
        if self._identity is None:
            raise RuntimeError("the identity service is not open yet")
        return self._identity

    @property
    def oauth(self) -> OAuthComponents:
        if self._oauth is None:
            raise RuntimeError("the OAuth components are not open yet")
        return self._oauth

    async def reload(self) -> ReloadResult:
        async with self._reload_lock:
            try:
                config, _ = load_config(self.config_path)
                await self.oauth.reconfigure(config)  # issuers first: the new policies may name new ones
                try:
                    compiled = self._compile()
                except ConfigError:
                    await self.oauth.reconfigure(self.current.config)
                    raise
            except ConfigError as exc:
                self.metrics.reloads.labels("rejected").inc()
                for issue in exc.issues:
                    log.error("configuration reload rejected, still serving generation %d: %s",
                              self._generation, issue)
                return ReloadResult(False, self._generation, [str(i) for i in exc.issues])
            self._warn_listener_changes(self.current.config, compiled.config)
            new = compiled.config
            if (new.store, new.keys.pepper, new.redis, new.redis_timeout) != self._identity_source:
                log.warning("store, keys.pepper, redis and redis_timeout changes take effect at the next restart")
            self._reload_tls(compiled.config)
            self._install(compiled)
            self.metrics.reloads.labels("applied").inc()
            log.warning("configuration reloaded: generation %d (%d routes)", compiled.generation,
                        len(compiled.routes))
            return ReloadResult(True, compiled.generation, [])

    def _warn_listener_changes(self, old: GatewayConfig, new: GatewayConfig) -> None:
        for name in LISTENER_NAMES:
            before = getattr(old.server, name)
            after = getattr(new.server, name)
            if (before.enabled, before.host, before.port) != (after.enabled, after.host, after.port):
                log.warning("server.%s listener changes take effect at the next restart", name)
        if old.server.admin.failed_auth != new.server.admin.failed_auth:
            log.warning("server.admin.failed_auth changes take effect at the next restart")

    def _reload_tls(self, config: GatewayConfig) -> None:
        if self._tls_context is None:
            return
        files = self._certificate_files(config)
        if files is None:
            return
        try:
            reload_certificate(self._tls_context, *files)
            self._tls_files = files
        except TlsConfigError as exc:
            log.error("TLS certificate reload failed, keeping the current certificate: %s", exc)

    def _certificate_files(self, config: GatewayConfig) -> tuple[str, str] | None:
        https = config.server.https
        base = self.config_path.parent
        if https.cert_file and https.key_file:
            return str(base / https.cert_file), str(base / https.key_file)
        if https.self_signed:
            cert, key = ensure_self_signed(base / config.server.data_dir, ("localhost",))
            return str(cert), str(key)
        return None

    # -- listeners ---------------------------------------------------------------------------------
    def _limits(self) -> Limits:
        return self.current.config.server.limits

    def _hsts(self) -> bytes | None:
        hsts = self.current.config.server.https.hsts
        if hsts.max_age <= 0:
            return None
        value = f"max-age={hsts.max_age}"
        if hsts.include_subdomains:
            value += "; includeSubDomains"
        if hsts.preload:
            value += "; preload"
        return value.encode()

    def _docs_base(self) -> str:
        return self.current.config.server.docs_base_url

    def _finished_quietly(self, exchange: Exchange) -> None:
        self.metrics.observe_request(str(exchange.scratch.get("route", "-")), exchange.status,
                                     time.monotonic() - exchange.started)
        code = exchange.scratch.get("reject_code")
        if isinstance(code, str):
            self.metrics.observe_rejection(code)

    def status(self) -> dict[str, Any]:
        upstreams = {}
        self.metrics.upstream_healthy.clear()  # upstreams removed by a reload must not linger
        for name, cluster in self._clusters.items():
            healthy = cluster.healthy_count()
            self.metrics.upstream_healthy.labels(name).set(healthy)
            upstreams[name] = {"healthy_targets": healthy, "targets": len(cluster.targets)}
        for name, item in self._listening.items():
            self.metrics.connections.labels(name).set(item.listener.tracker.count)
        return {
            "ready": self._current is not None and not self._stopping.is_set(),
            "generation": self._generation,
            "upstreams": upstreams,
            "listeners": {name: item.sock.getsockname()[1] for name, item in self._listening.items()},
        }

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        sockets = dict(sockets or {})
        config = self.current.config
        server = config.server
        if server.access_log.enabled:
            path = server.access_log.path
            if path != "-" and not Path(path).is_absolute():
                path = str(self.config_path.parent / path)
            self._access_log = AccessLog(path, self.loop)
        gateway = GatewayHandler(self, self.metrics, self._access_log)
        mounts = self.oauth.mounts((server.https.host if server.https.enabled else server.http.host,
                                    server.https.port if server.https.enabled else server.http.port),
                                   gateway.finished)
        if mounts:
            gateway.mount(Mounts(mounts))
        plain_handler: Handler = gateway
        if server.https.enabled:
            files = self._certificate_files(config)
            assert files is not None
            self._tls_context = build_server_context(*files)
            self._tls_files = files
            await self._listen("https", gateway, server.https.host, server.https.port, sockets, tls=True)
            if server.http.enabled:
                redirect_port = server.http.redirect_port or self._listening["https"].sock.getsockname()[1]
                plain_handler = RedirectHandler(lambda: redirect_port, self._finished_quietly)
        else:
            log.warning("TLS is switched off (server.https.enabled: false): the API is served over plain "
                        "HTTP. Use this for local development only.")
        if server.http.enabled:
            await self._listen("http", plain_handler, server.http.host, server.http.port, sockets, tls=False)
        if server.admin.enabled:
            assert self._counters is not None  # opened by load_initial, before any listener
            brake = FailedAuthBrake(server.admin.failed_auth, self._counters, counter_prefix="adminfail",
                                    credential="admin credentials")
            admin_app = create_admin_app(AdminServices(self.metrics, self.reload, self.status, self._docs_base,
                                                       self._identity, self._oauth_admin(), brake))
            admin_handler = AsgiHandler(admin_app, max_body_bytes=1024 * 1024,
                                        server=(server.admin.host, server.admin.port),
                                        finished=self._finished_quietly)
            await self._listen("admin", admin_handler, server.admin.host, server.admin.port, sockets, tls=False)
        for sock in sockets.values():
            sock.close()  # inherited sockets the configuration does not use
        ports = {name: item.sock.getsockname()[1] for name, item in self._listening.items()}
        log.warning("bastion started: generation %d, %d routes, listeners %s", self._generation,
                    len(self.current.routes), ports)

    def _oauth_admin(self) -> OAuthAdmin:
        oauth = self.oauth

        def access_token_ttl() -> timedelta:
            return timedelta(seconds=self.current.config.oauth.server.access_token_ttl)

        return OAuthAdmin(store=oauth.store, revocations=oauth.revocations, signing_keys=oauth.keys,
                          access_token_ttl=access_token_ttl)

    async def _listen(self, name: str, handler: Handler, host: str, port: int,
                      sockets: dict[str, socket.socket], *, tls: bool) -> None:
        sock = sockets.pop(name, None) or _bind(host, port)
        listener = Listener(name, handler, tls=tls, limits=self._limits, hsts=self._hsts,
                            docs_base=self._docs_base)
        server = await self.loop.create_server(
            listener.protocol_factory, sock=sock, ssl=self._tls_context if tls else None,
            ssl_handshake_timeout=self._limits().head_timeout if tls else None, backlog=1024)
        self._listening[name] = _Listening(listener, server, sock)

    # -- lifecycle ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
        self.loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self._stopping.set)

    def _reload_in_background(self) -> None:
        task = self.loop.create_task(self.reload())
        self._background.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._background.discard)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def shutdown(self) -> None:
        self._stopping.set()
        log.warning("bastion stopping: draining connections")
        for item in self._listening.values():
            item.server.close()
            item.listener.drain()
        deadline = time.monotonic() + self.current.config.server.drain_timeout
        while time.monotonic() < deadline and any(i.listener.busy for i in self._listening.values()):
            await asyncio.sleep(0.05)
        for item in self._listening.values():
            for conn in list(item.listener.tracker.connections):
                conn.abort()
        for cluster in self._clusters.values():
            cluster.close()
        if self._access_log is not None:
            self._access_log.close()
        if self._oauth is not None:
            await self._oauth.close()
        if self._identity is not None:
            await self._identity.close()
        if self._counters is not None:
            await self._counters.close()
        log.warning("bastion stopped")


def tune_garbage_collector() -> None:
    """Requests create no reference cycles, but their many short-lived objects made the cyclic collector
    run thousands of times a minute, with full collections pausing the loop for up to 50 ms (measured):
    freeze what startup built and collect young objects far less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_gateway(config_path: str | os.PathLike[str]) -> None:
    runtime = Runtime(config_path)
    await runtime.load_initial()
    await runtime.start(inherited_sockets())
    runtime.identity.start()
    runtime.oauth.start()
    tune_garbage_collector()
    runtime.install_signal_handlers()
    await runtime.wait_stopped()
    await runtime.shutdown()
