"""Rate limits through real gateway processes: per IP, read/write, consumer/credential/plan, cost, shadow,
two nodes sharing one limit through Redis, and what happens when Redis dies, stops or comes back."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx
import pytest
import redis

from tests.support.identity import StoreHandle
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config

SHARED_REDIS = ("127.0.0.1", 6379)
SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
NO_HANG = 1.0  # seconds: a request answered within this did not wait on a dead or frozen Redis
RECOVERED = 5.0  # seconds: limiting through Redis again within this is a recovery by itself (a few breaker cooldowns)
OTHER_IP = "127.0.0.2"  # a second client address: Linux routes all of 127.0.0.0/8 to the loopback


# -- helpers -----------------------------------------------------------------------------------------------
def members(value: str) -> dict[str, dict[str, int]]:
    """A RateLimit / RateLimit-Policy field (`"name";q=5;w=2, ...`) as {name: {param: value}}."""
    parsed: dict[str, dict[str, int]] = {}
    for item in value.split(","):
        name, *params = item.strip().split(";")
        parsed[name.strip('"')] = {k: int(v) for k, v in (p.split("=", 1) for p in params)}
    return parsed


def on_route(config: dict[str, Any], route: str, rate_limit: dict[str, Any]) -> dict[str, Any]:
    for item in config["apis"][0]["routes"]:
        if item["name"] == route:
            item["policies"] = {"rate-limit": rate_limit}
            return config
    raise KeyError(route)


def on_operation(config: dict[str, Any], operation: str, rate_limit: dict[str, Any]) -> dict[str, Any]:
    config["apis"][0].setdefault("operations", {})[operation] = {"policies": {"rate-limit": rate_limit}}
    return config


@contextmanager
def client_from(gateway: Gateway, local_address: str) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(base_url=gateway.url, transport=transport, timeout=10.0) as client:
        yield client


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


def keyed_config(upstream_url: str, rate_limit: dict[str, Any]) -> dict[str, Any]:
    """v1 behind key-auth (echo needs `echo:use`) with one rate-limit policy for the whole API."""
    config = base_config(upstream_url)
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"key-auth": {}, "rate-limit": rate_limit}
    for route in v1["routes"]:
        route["permissions"] = ["echo:use"]
    return config


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    """Seconds until `check` held, or None if it never did within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    return None


def _unavailable(reason: str) -> NoReturn:
    """Redis tests skip on a developer machine without Redis, and fail under CI, where Redis is required."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required when CI=true)")
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


@pytest.fixture
def shared_redis() -> str:
    try:
        with socket.create_connection(SHARED_REDIS, timeout=0.5):
            pass
    except OSError:
        _unavailable("Redis is not running on 127.0.0.1:6379")
    return SHARED_REDIS_URL


class PrivateRedis:
    """A redis-server of this test alone, on a free port, that the test may kill, stop and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL ends a stopped (SIGSTOP) process too
            self.process.wait(5)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server is not installed")
    server = PrivateRedis(binary)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@dataclass
class Outcome:
    status: int
    seconds: float
    code: str | None
    retry_after: str | None


def hammer(base_url: str, path: str, *, threads: int, per_thread: int) -> list[Outcome]:
    """Concurrent requests, one keep-alive client per thread."""

    def worker(_: int) -> list[Outcome]:
        out: list[Outcome] = []
        with httpx.Client(base_url=base_url, timeout=5.0) as client:
            for _ in range(per_thread):
                started = time.monotonic()
                response = client.get(path)
                elapsed = time.monotonic() - started
                code = response.json().get("code") if response.status_code >= 400 else None
                out.append(Outcome(response.status_code, elapsed, code, response.headers.get("retry-after")))
        return out

    with ThreadPoolExecutor(threads) as pool:
        return [o for batch in pool.map(worker, range(threads)) for o in batch]


# -- one node ----------------------------------------------------------------------------------------------
def test_per_ip_sliding_window(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = on_route(base_config(upstream.url), "echo",
                      {"limits": [{"name": "per-ip", "key": ["ip"], "rate": 5, "per": "2s"}]})
    gateway = make_gateway(config)
    with gateway.client() as client, client_from(gateway, OTHER_IP) as other:
        responses = [client.get("/v1/echo") for _ in range(8)]
        assert statuses(responses) == [200] * 5 + [429] * 3
        for index, response in enumerate(responses):  # the headers ride on every response, 200 or 429
            assert members(response.headers["ratelimit-policy"]) == {"per-ip": {"q": 5, "w": 2}}
            state = members(response.headers["ratelimit"])["per-ip"]
            assert state["r"] == max(0, 4 - index)
            assert 1 <= state["t"] <= 3
        refused = responses[5]
        body = assert_safe_problem(refused, "rate_limit.exceeded")
        assert "5 requests per 2 seconds" in body["detail"]
        retry = int(refused.headers["retry-after"])
        assert 1 <= retry <= 3
        assert members(refused.headers["ratelimit"])["per-ip"]["t"] == retry  # t never points before Retry-After
        # another client address has a budget of its own
        assert other.get("/v1/echo").status_code == 200
        # a route without the policy carries no rate-limit headers
        plain = client.get("/v1/users")
        assert plain.status_code == 200
        assert "ratelimit" not in plain.headers and "ratelimit-policy" not in plain.headers
        time.sleep(retry)  # Retry-After is honest: waiting that long is enough
        assert client.get("/v1/echo").status_code == 200
    refusals = [r for r in gateway.wait_access_log(11) if r["status"] == 429]
    assert len(refusals) == 3
    assert all(r["reject_code"] == "rate_limit.exceeded" and r["events"] == ["rate-limit:exceeded:per-ip"]
               for r in refusals)


def test_per_ip_gcra(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    # 5 per 5 s, burst 5: one request refills every second.
    config = on_route(base_config(upstream.url), "echo",
                      {"limits": [{"name": "bucket", "algorithm": "gcra", "rate": 5, "per": "5s", "burst": 5}]})
    gateway = make_gateway(config)
    with gateway.client() as client:
        responses = [client.get("/v1/echo") for _ in range(7)]
        assert statuses(responses) == [200] * 5 + [429] * 2
        remaining = [members(r.headers["ratelimit"])["bucket"]["r"] for r in responses]
        assert remaining == [4, 3, 2, 1, 0, 0, 0]
        assert all(members(r.headers["ratelimit-policy"]) == {"bucket": {"q": 5, "w": 5}} for r in responses)
        refused = responses[5]
        assert_safe_problem(refused, "rate_limit.exceeded")
        assert refused.headers["retry-after"] == "1"
        time.sleep(1.0)
        # one interval later, exactly one more request fits: a bucket refills smoothly, not all at once
        assert statuses([client.get("/v1/echo") for _ in range(2)]) == [200, 429]


def test_reads_and_writes_have_separate_budgets(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = on_route(base_config(upstream.url), "echo", {"limits": [
        {"name": "reads", "methods": "read", "rate": 6, "per": "2s"},
        {"name": "writes", "methods": "write", "rate": 3, "per": "2s"},
    ]})
    gateway = make_gateway(config)
    # Writes go on connections of their own: after refusing a request whose body it has not read, the server
    # closes the connection without sending `Connection: close`, so the next request on it would fail.
    with gateway.client() as reader, gateway.client() as writer:
        # reads exhausted first: writes still pass
        reads = [reader.get("/v1/echo") for _ in range(7)]
        writes = [writer.post("/v1/echo", json={"n": i}) for i in range(4)]
        assert statuses(reads) == [200] * 6 + [429]
        assert statuses(writes) == [200] * 3 + [429]
        assert all(set(members(r.headers["ratelimit"])) == {"reads"} for r in reads)
        assert all(set(members(r.headers["ratelimit"])) == {"writes"} for r in writes)
        assert members(writes[0].headers["ratelimit-policy"]) == {"writes": {"q": 3, "w": 2}}
    with client_from(gateway, OTHER_IP) as reader, client_from(gateway, OTHER_IP) as writer:
        # writes exhausted first (another client address, so fresh budgets): reads still pass
        writes = [writer.put("/v1/echo", json={"n": i}) for i in range(4)]
        reads = [reader.get("/v1/echo") for _ in range(7)]
        assert statuses(writes) == [200] * 3 + [429]
        assert statuses(reads) == [200] * 6 + [429]


def test_cost_weights(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = on_route(base_config(upstream.url), "echo",
                      {"limits": [{"name": "units", "rate": 10, "per": "10s", "cost": {"POST": 5}}]})
    gateway = make_gateway(config)
    with gateway.client() as reader, gateway.client() as writer:  # writes apart: see the test above
        first = reader.get("/v1/echo")  # 1 unit
        write = writer.post("/v1/echo", json={})  # 5 units
        too_dear = writer.post("/v1/echo", json={})  # 5 more would make 11
        cheap = [reader.get("/v1/echo") for _ in range(5)]  # 4 units left
        assert [first.status_code, write.status_code, too_dear.status_code] == [200, 200, 429]
        assert [members(r.headers["ratelimit"])["units"]["r"] for r in (first, write, too_dear)] == [9, 4, 4]
        assert_safe_problem(too_dear, "rate_limit.exceeded")
        assert statuses(cheap) == [200] * 4 + [429]


def test_consumer_and_credential_keys(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    # The credential limit comes first: a request it refuses never spends the consumer's budget.
    config = keyed_config(upstream.url, {"limits": [
        {"name": "per-key", "key": ["credential"], "rate": 3, "per": "30s"},
        {"name": "per-consumer", "key": ["consumer"], "rate": 5, "per": "30s"},
    ]})
    gateway = make_gateway(config)
    store = StoreHandle(config, gateway.config_path.parent)
    store.role("user", ["echo:use"])
    alice = store.consumer("alice", ["user"])
    key_1, _ = store.key(alice, "read")
    key_2, _ = store.key(alice, "read")
    bob = store.consumer("bob", ["user"])
    bob_key, _ = store.key(bob, "read")
    with gateway.client() as client:
        first = [client.get("/v1/echo", headers=bearer(key_1)) for _ in range(4)]
        assert statuses(first) == [200, 200, 200, 429]  # key 1's own limit
        assert members(first[3].headers["ratelimit"])["per-key"]["r"] == 0
        state = members(first[2].headers["ratelimit"])
        assert (state["per-key"]["r"], state["per-consumer"]["r"]) == (0, 2)
        # key 2 starts a fresh credential budget but shares alice's consumer budget (3 of 5 spent)
        second = [client.get("/v1/echo", headers=bearer(key_2)) for _ in range(3)]
        assert statuses(second) == [200, 200, 429]
        assert members(second[2].headers["ratelimit"])["per-consumer"]["r"] == 0
        assert_safe_problem(second[2], "rate_limit.exceeded")
        # bob is untouched by alice's traffic
        assert statuses([client.get("/v1/echo", headers=bearer(bob_key)) for _ in range(3)]) == [200] * 3
        # anonymous requests are refused by key-auth before any limit is consulted
        assert client.get("/v1/echo").status_code == 401


def test_plans(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = keyed_config(upstream.url, {
        "limits": [{"name": "per-consumer", "key": ["consumer"], "rate": 3, "per": "30s"}],
        "plans": {"free": {"per-consumer": {"rate": 2}}, "pro": {"per-consumer": {"rate": 6, "per": "60s"}}},
    })
    gateway = make_gateway(config)
    store = StoreHandle(config, gateway.config_path.parent)
    store.role("user", ["echo:use"])
    keys = {}
    for plan in ("free", "pro", None):
        consumer = store.consumer(f"on-{plan}", ["user"], plan=plan)
        keys[plan] = store.key(consumer, "read")[0]
    expected = {"free": (2, 30), "pro": (6, 60), None: (3, 30)}  # no plan, or an unknown one: the base limit
    with gateway.client() as client:
        for plan, (rate, window) in expected.items():
            responses = [client.get("/v1/echo", headers=bearer(keys[plan])) for _ in range(rate + 1)]
            assert statuses(responses) == [200] * rate + [429], plan
            policy = members(responses[0].headers["ratelimit-policy"])
            assert policy == {"per-consumer": {"q": rate, "w": window}}, plan


def metric(gateway: Gateway, family: str, **labels: str) -> float:
    """The sum of the admin listener's /metrics samples of `family` that carry `labels` (0 when none)."""
    total = 0.0
    for line in httpx.get(gateway.admin_url + "/metrics", timeout=5.0).text.splitlines():
        series, _, value = line.rpartition(" ")
        metric_name, _, label_text = series.partition("{")
        if metric_name != family:
            continue
        found = dict(item.split("=", 1) for item in label_text.rstrip("}").split(",") if item)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


def test_shadow_mode_refuses_nothing_and_records(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = on_route(base_config(upstream.url), "echo",
                      {"mode": "shadow", "limits": [{"name": "trial", "rate": 3, "per": "30s"}]})
    gateway = make_gateway(config)
    with gateway.client() as client:
        responses = [client.get("/v1/echo") for _ in range(6)]
    assert statuses(responses) == [200] * 6
    # the headers tell the client what enforcement would mean
    assert [members(r.headers["ratelimit"])["trial"]["r"] for r in responses] == [2, 1, 0, 0, 0, 0]
    # what would have been refused: in the access log, the metrics and the gateway log (throttled)
    records = [r for r in gateway.wait_access_log(6) if r["route"].endswith(".echo")]
    assert [r["status"] for r in records] == [200] * 6
    assert all(r["reject_code"] is None for r in records)
    assert [r.get("events") for r in records] == [None] * 3 + [["rate-limit:shadow_refused:trial"]] * 3
    assert metric(gateway, "bastion_policy_events_total", policy="rate-limit", event="shadow_refused",
                  name="trial") == 3
    assert wait_until(lambda: "would refuse" in gateway.logs(), 5.0) is not None
    lines = [line for line in gateway.logs().splitlines() if "would refuse" in line]
    assert len(lines) == 1, lines  # one line a second at most: an attack must not flood the log
    assert "rate limit 'trial' would refuse a request (shadow mode" in lines[0]


# -- several nodes, Redis --------------------------------------------------------------------------------
def redis_offset(url: str) -> float:
    """Redis's clock minus ours (seconds): the limits' windows are aligned on the Redis server's clock."""
    client = redis.Redis.from_url(url)
    try:
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
    finally:
        client.close()
    return seconds + micros / 1e6 - (before + after) / 2


def test_two_nodes_share_one_limit_through_redis(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                  shared_redis: str) -> None:
    limit, windows, threads = 40, 3, 6
    config = base_config(upstream.url)
    config["redis"] = shared_redis
    api = config["apis"][0]
    api["name"] = f"rl-{uuid.uuid4().hex[:12]}"  # a fresh counter: Redis keeps other runs' counters
    api["policies"] = {"rate-limit": {"limits": [{"name": "shared", "key": ["ip"], "rate": limit, "per": "1s"}]}}
    nodes = [make_gateway(config), make_gateway(config)]
    offset = redis_offset(shared_redis)
    # Start a little before a window of the Redis clock begins, stop after `windows` whole windows.
    redis_now = time.time() + offset
    first_window = int(redis_now) + 1 if redis_now % 1 < 0.7 else int(redis_now) + 2
    start_at = first_window - 0.3 - offset
    stop_at = first_window + windows + 0.1 - offset
    results: list[tuple[float, float, int, int]] = []  # (sent, answered) on the Redis clock, node, status
    lock = threading.Lock()

    def worker(index: int) -> None:
        clients = [httpx.Client(base_url=node.url, timeout=5.0) for node in nodes]
        seen: list[tuple[float, float, int, int]] = []
        try:
            time.sleep(max(0.0, start_at - time.time()))
            turn = index
            while time.time() < stop_at:
                node = turn % 2  # alternate between the nodes
                turn += 1
                sent = time.time()
                status = clients[node].get("/v1/echo").status_code
                seen.append((sent + offset, time.time() + offset, node, status))
        finally:
            for client in clients:
                client.close()
        with lock:
            results.extend(seen)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    unavailable = sum(1 for *_, status in results if status == 503)
    assert {status for *_, status in results} <= {200, 429, 503}
    # The 50 ms deadline runs on the gateway's event loop: a stall of the (shared, busy) test machine may make
    # a hit miss it now and then (failing closed). More than that would be a store problem.
    assert unavailable <= len(results) // 200, f"{unavailable} of {len(results)} refused with 503"
    # A response whose whole round trip lies inside a window was certainly admitted in it; one that straddles
    # a boundary (a few ms) may belong to either side: reported, not counted.
    report = []
    for window in range(first_window, first_window + windows):
        inside = [(node, status) for sent, answered, node, status in results
                  if window <= sent and answered < window + 1]
        straddling = [status for sent, answered, _, status in results if status == 200 and sent < window <= answered]
        admitted = [node for node, status in inside if status == 200]
        report.append((len(admitted), admitted.count(0), admitted.count(1), len(straddling), len(inside)))
    print(f"\ntwo nodes, limit {limit}/s: (admitted, node A, node B, across the start, sent) per window: {report}; "
          f"503: {unavailable}")
    for admitted, on_a, on_b, _, sent in report:
        assert admitted <= limit * 1.05, report
        assert sent > 2 * limit, report  # the load really exceeded the limit
        assert admitted >= limit * 0.8, report  # and the limit was not starving clients either
        assert on_a > 0 and on_b > 0, report  # both nodes admitted part of it


def test_redis_killed_then_restarted(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                     private_redis: PrivateRedis) -> None:
    def limit(mode: str, rate: int, per: str, **extra: Any) -> dict[str, Any]:
        return {"on_store_failure": mode, **extra, "limits": [{"name": mode, "rate": rate, "per": per}]}

    config = base_config(upstream.url)
    config["redis"] = private_redis.url
    on_route(config, "echo", limit("closed", 5, "1s"))
    on_operation(config, "listUsers", limit("open", 5, "1s"))
    on_operation(config, "listOrders", limit("local", 10, "2s", nodes=2))
    gateway = make_gateway(config)
    with gateway.client() as client:
        # Redis up: 429 at the limit
        assert 429 in statuses([client.get("/v1/echo") for _ in range(7)])

        private_redis.kill()
        closed = hammer(gateway.url, "/v1/echo", threads=4, per_thread=15)
        assert {(o.status, o.code, o.retry_after) for o in closed} == {(503, "rate_limit.unavailable", "1")}
        worst_closed = max(o.seconds for o in closed)
        # Bounds, not timings: the driver's default retries blocked each call for 4.3 s. Loose enough for a
        # loaded test machine, where the 50 ms deadline may fire late.
        assert worst_closed < NO_HANG, worst_closed
        assert_safe_problem(client.get("/v1/echo"), "rate_limit.unavailable")
        opened = hammer(gateway.url, "/v1/users", threads=4, per_thread=5)
        assert {o.status for o in opened} == {200}  # 20 admitted where the limit is 5: failing open
        worst_open = max(o.seconds for o in opened)
        assert worst_open < NO_HANG, worst_open
        # local: each node allows limit / nodes (10 / 2) from its own memory
        local = [client.get("/v1/orders") for _ in range(8)]
        assert statuses(local) == [200] * 5 + [429] * 3
        assert members(local[0].headers["ratelimit-policy"]) == {"local": {"q": 10, "w": 2}}
        assert members(local[0].headers["ratelimit"])["local"]["r"] == 4  # its share: 5 - 1
        assert "failing closed" in gateway.logs()
        events = {event for r in gateway.wait_access_log(100) for event in r.get("events") or ()}
        assert {"rate-limit:unavailable:closed", "rate-limit:unchecked:open", "rate-limit:local:local"} <= events

        private_redis.start()  # same port, empty: the scripts must be loaded again
        # back by itself: the breaker's next probe (cooldown 1 s) finds Redis again
        recovered = wait_until(lambda: client.get("/v1/echo").status_code != 503, RECOVERED)
        assert recovered is not None, "Redis came back, the gateway did not use it again"
        again = [client.get("/v1/echo") for _ in range(8)]
        assert 429 in statuses(again) and 503 not in statuses(again)
        assert statuses(again).count(200) <= 5
        print(f"\nredis killed: closed worst {worst_closed * 1000:.1f} ms, open worst {worst_open * 1000:.1f} ms; "
              f"restarted: limiting again after {recovered:.2f} s")


def test_redis_stopped_fails_within_the_deadline(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                 private_redis: PrivateRedis) -> None:
    config = base_config(upstream.url)
    config["redis"] = private_redis.url
    on_route(config, "echo", {"limits": [{"name": "closed", "rate": 10_000, "per": "1s"}]})
    on_operation(config, "listUsers", {"on_store_failure": "open",
                                       "limits": [{"name": "open", "rate": 10_000, "per": "1s"}]})
    gateway = make_gateway(config)
    assert {o.status for o in hammer(gateway.url, "/v1/echo", threads=4, per_thread=5)} == {200}
    private_redis.signal(signal.SIGSTOP)  # accepts connections (kernel backlog), never answers
    try:
        closed = hammer(gateway.url, "/v1/echo", threads=4, per_thread=15)
        opened = hammer(gateway.url, "/v1/users", threads=4, per_thread=5)
    finally:
        private_redis.signal(signal.SIGCONT)
    assert {(o.status, o.code) for o in closed} == {(503, "rate_limit.unavailable")}
    assert {o.status for o in opened} == {200}
    worst = max(o.seconds for o in closed + opened)
    assert worst < NO_HANG, worst  # a frozen Redis without the deadline: every request hangs
    with gateway.client() as client:
        recovered = wait_until(lambda: client.get("/v1/echo").status_code == 200, RECOVERED)
    assert recovered is not None, "Redis resumed, the gateway did not use it again"
    print(f"\nredis stopped: worst {worst * 1000:.1f} ms over {len(closed + opened)} requests; "
          f"resumed: limiting again after {recovered:.2f} s")


def test_the_redis_timeout_is_the_configured_one(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                 private_redis: PrivateRedis) -> None:
    config = base_config(upstream.url)
    config["redis"] = private_redis.url
    config["redis_timeout"] = 0.4  # a Redis across a slow link
    on_route(config, "echo", {"limits": [{"name": "closed", "rate": 10_000, "per": "1s"}]})
    gateway = make_gateway(config)
    with gateway.client() as client:
        assert client.get("/v1/echo").status_code == 200
        private_redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused = client.get("/v1/echo")
            waited = time.monotonic() - started
        finally:
            private_redis.signal(signal.SIGCONT)
    assert_safe_problem(refused, "rate_limit.unavailable")
    assert waited >= 0.35, waited  # it waited for the configured 0.4 s, not the default 50 ms


def test_a_burst_of_clients_never_trips_the_breaker(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                    shared_redis: str) -> None:
    """200 clients whose requests arrive together, on a fresh node: every hit reaches a healthy Redis.
    (With a connection per hit in flight, ~200 connects missed the 50 ms deadline and the breaker then
    failed every request for a second.)"""
    clients = 200  # under server.limits.max_connections_per_ip
    config = base_config(upstream.url)
    config["redis"] = shared_redis
    api = config["apis"][0]
    api["name"] = f"rl-{uuid.uuid4().hex[:12]}"
    api["policies"] = {"rate-limit": {"limits": [{"name": "roomy", "rate": 1_000_000, "per": "1s"}]}}
    gateway = make_gateway(config)
    request = b"GET /v1/echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
    for _ in range(2):
        socks = [socket.create_connection(("127.0.0.1", gateway.ports["http"]), timeout=10) for _ in range(clients)]
        seen: list[bytes] = []
        try:
            for sock in socks:
                sock.sendall(request)
            for sock in socks:
                head = b""
                while b"\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                seen.append(head.split(b" ", 2)[1] if head else b"closed")
        finally:
            for sock in socks:
                sock.close()
        assert seen == [b"200"] * clients, {s: seen.count(s) for s in set(seen)}
    assert "circuit open" not in gateway.logs()
