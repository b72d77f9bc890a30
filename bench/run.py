"""Bastion throughput/latency benchmark against nginx as the reference (`make bench`).

Starts a fixed-response nginx upstream, then for each target (see targets.py) starts the system under
test fresh on its own core, checks it proxies the upstream's body, warms it up, runs wrk, and charges
the CPU time of the system's process tree to the requests completed. Repeats with a rotated order and
reports medians, ratios to nginx and the pass/fail bars. See bench/README.md.

Exit code: 0 whatever the bars say (failures are printed loudly); 2 if the harness itself failed;
130 if interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from harness import (
    API_PATH,
    BENCH,
    UPSTREAM_BODY,
    HarnessError,
    Pinning,
    ProcessRegistry,
    choose_pinning,
    command_output,
    ensure_tools,
    git_commit,
    http_get,
    log,
    machine_busy_seconds,
    machine_info,
    own_cpu_seconds,
    package_version,
    prometheus_sum,
    python_build,
    tree_cpu_seconds,
    wait_for_body,
)
from load import LoadGenerator, LoadResult
from systems import NginxInfo, Running, start_bastion, start_nginx_proxy, start_upstream
from targets import TARGETS, TargetContext, TargetSpec

RESULTS = BENCH / "results"


# -- one measurement ----------------------------------------------------------------------------------
@dataclass
class Measurement:
    target: str
    rep: int
    ok: bool
    failure: str | None = None
    load: LoadResult | None = None
    warmup_requests: int = 0
    health_responses: int = 0
    sut_cpu_seconds: float = 0.0
    upstream_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    foreign_cpu_seconds: float = 0.0  # used by other processes on the machine during the timed run
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.load.requests if self.load else 0

    @property
    def cpu_us_per_req(self) -> float | None:
        return self.sut_cpu_seconds / self.requests * 1e6 if self.requests else None

    @property
    def upstream_cpu_us_per_req(self) -> float | None:
        return self.upstream_cpu_seconds / self.requests * 1e6 if self.requests else None

    @property
    def sut_core_utilisation(self) -> float | None:
        return self.sut_cpu_seconds / self.wall_seconds if self.wall_seconds else None

    @property
    def foreign_cores(self) -> float | None:
        """Cores' worth of CPU other processes used during the timed run: the machine's noise."""
        return self.foreign_cpu_seconds / self.wall_seconds if self.wall_seconds else None

    @property
    def errors(self) -> int:
        return self.load.errors if self.load else 0

    @property
    def flagged(self) -> bool:
        return not self.ok or self.errors > 0 or any(c.get("ok") is False for c in self.checks.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "rep": self.rep, "ok": self.ok, "failure": self.failure,
            "flagged": self.flagged,
            "rps": self.load.rps if self.load else None,
            "p50_ms": self.load.p50_ms if self.load else None,
            "p99_ms": self.load.p99_ms if self.load else None,
            "requests": self.requests, "errors": self.errors,
            "cpu_us_per_req": self.cpu_us_per_req,
            "upstream_cpu_us_per_req": self.upstream_cpu_us_per_req,
            "sut_core_utilisation": self.sut_core_utilisation,
            "foreign_cores": self.foreign_cores, "foreign_cpu_seconds": self.foreign_cpu_seconds,
            "sut_cpu_seconds": self.sut_cpu_seconds, "upstream_cpu_seconds": self.upstream_cpu_seconds,
            "wall_seconds": self.wall_seconds, "warmup_requests": self.warmup_requests,
            "health_responses": self.health_responses, "checks": self.checks,
            "load": self.load.to_json() if self.load else None,
        }


@dataclass
class Bench:
    args: argparse.Namespace
    registry: ProcessRegistry
    pinning: Pinning
    loadgen: LoadGenerator
    nginx: NginxInfo | None
    tmp: Path
    upstream: Running | None = None

    def start(self, spec: TargetSpec, ctx: TargetContext) -> Running:
        assert self.upstream is not None
        if spec.kind == "direct":
            return self.upstream
        if spec.kind == "nginx":
            assert self.nginx is not None
            return start_nginx_proxy(self.registry, self.nginx, ctx.workdir, self.upstream.port,
                                     self.pinning.sut_core)
        assert spec.render is not None, f"{spec.name}: a bastion target needs a render function"
        return start_bastion(self.registry, spec.name, spec.render(ctx), ctx.workdir, self.pinning.sut_core)

    def measure(self, spec: TargetSpec, rep: int) -> Measurement:
        assert self.upstream is not None
        workdir = self.tmp / f"rep{rep + 1}-{spec.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = TargetContext(spec.name, rep, workdir, self.upstream.url(""), self.registry, self.pinning)
        if spec.prepare is not None:
            spec.prepare(ctx)
        headers = spec.headers(ctx) if spec.headers else {}
        result = Measurement(spec.name, rep, ok=True)
        running = self.start(spec, ctx)
        owned = running is not self.upstream
        try:
            probe = wait_for_body(running.host, running.port, API_PATH, UPSTREAM_BODY, headers=headers,
                                  proc=running.main)
            result.health_responses = probe.responses
            if not probe.ok:
                result.ok = False
                result.failure = f"health check failed: {probe.detail}"
                log(f"{spec.name}: {result.failure}\n{running.main.log_tail()}")
                return result
            url = running.url(API_PATH)
            warm = self.loadgen.run(url, self.args.warmup, headers)
            result.warmup_requests = warm.requests
            busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
            cpu_before = tree_cpu_seconds(running.cpu_pid)
            upstream_before = tree_cpu_seconds(self.upstream.cpu_pid)
            started = time.monotonic()
            result.load = self.loadgen.run(url, self.args.duration, headers)
            result.wall_seconds = time.monotonic() - started
            result.sut_cpu_seconds = tree_cpu_seconds(running.cpu_pid) - cpu_before
            result.upstream_cpu_seconds = tree_cpu_seconds(self.upstream.cpu_pid) - upstream_before
            accounted = result.sut_cpu_seconds + (own_cpu_seconds() - own_before)
            if owned:
                accounted += result.upstream_cpu_seconds
            result.foreign_cpu_seconds = max(0.0, machine_busy_seconds() - busy_before - accounted)
            if result.load.requests == 0:
                result.ok = False
                result.failure = f"no request completed ({result.load.errors} errors)"
                log(f"{spec.name}: {result.failure}\n{running.main.log_tail()}")
                return result
            if not running.main.alive():
                result.ok = False
                result.failure = f"{running.main.name} exited during the run ({running.main.popen.returncode})"
                log(f"{spec.name}: {result.failure}\n{running.main.log_tail()}")
                return result
            if spec.kind == "bastion" and spec.check_metrics and running.admin_port is not None:
                result.checks["metrics"] = self.check_metrics(running, result, spec.route_label)
        finally:
            if owned:
                running.stop(self.registry)
        if spec.kind == "bastion":
            result.checks["exit"] = {"ok": running.main.popen.returncode == 0,
                                     "returncode": running.main.popen.returncode}
        if running.access_log is not None:
            result.checks["access_log"] = self.check_access_log(running.access_log, result)
        return result

    def in_flight(self) -> int:
        # wrk stops with up to one request in flight per connection, which the gateway still answers
        # and counts: at most `connections` more per load phase (warm-up and timed run)
        return 2 * self.loadgen.connections

    def expected_requests(self, result: Measurement) -> int:
        return result.health_responses + result.warmup_requests + result.requests

    def count_ok(self, counted: int, result: Measurement) -> bool:
        expected = self.expected_requests(result)
        return expected - 2 <= counted <= expected + self.in_flight() + 2

    def check_metrics(self, running: Running, result: Measurement, route_label: str) -> dict[str, Any]:
        assert running.admin_port is not None
        try:
            status, body = http_get(running.host, running.admin_port, "/metrics", timeout=5.0)
        except OSError as exc:
            return {"ok": False, "detail": f"scrape failed: {exc}"}
        if status != 200:
            return {"ok": False, "detail": f"/metrics answered {status}"}
        counted = int(prometheus_sum(body.decode(), "bastion_requests_total", {"route": route_label}))
        return {"ok": self.count_ok(counted, result), "bastion_requests_total": counted,
                "expected": self.expected_requests(result), "in_flight_allowance": self.in_flight()}

    def check_access_log(self, path: Path, result: Measurement) -> dict[str, Any]:
        try:
            with open(path, "rb") as handle:
                lines = sum(1 for _ in handle)
        except OSError as exc:
            return {"ok": False, "detail": f"cannot read access log: {exc}"}
        return {"ok": self.count_ok(lines, result), "lines": lines, "expected": self.expected_requests(result),
                "in_flight_allowance": self.in_flight()}


# -- summary ------------------------------------------------------------------------------------------
def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(specs: list[TargetSpec], measurements: list[Measurement]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        runs = [m for m in measurements if m.target == spec.name]
        good = [m for m in runs if m.ok and m.load is not None]
        out[spec.name] = {
            "reps": len(runs),
            "ok_reps": len(good),
            "rps": _median([m.load.rps for m in good if m.load]),
            "p50_ms": _median([m.load.p50_ms for m in good if m.load]),
            "p99_ms": _median([m.load.p99_ms for m in good if m.load]),
            "cpu_us_per_req": _median([m.cpu_us_per_req for m in good]),
            "upstream_cpu_us_per_req": _median([m.upstream_cpu_us_per_req for m in good]),
            "sut_core_utilisation": _median([m.sut_core_utilisation for m in good]),
            "foreign_cores": _median([m.foreign_cores for m in good]),
            "foreign_cores_max": max((m.foreign_cores or 0.0 for m in good), default=None),
            "errors": sum(m.errors for m in runs),
            "flagged": any(m.flagged for m in runs),
            "failures": [m.failure for m in runs if m.failure],
            "failed_checks": sorted({name for m in runs for name, c in m.checks.items() if c.get("ok") is False}),
        }
    return out


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def verdicts(specs: list[TargetSpec], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    metric_key = {"rps": "rps", "p99": "p99_ms", "cpu": "cpu_us_per_req"}
    for spec in specs:
        if spec.reference_only:
            continue
        for bar in spec.bars:
            row: dict[str, Any] = {"target": spec.name, "bar": bar.describe(), "metric": bar.metric,
                                   "threshold": bar.threshold, "reference": bar.reference}
            mine = summary.get(spec.name, {})
            ref = summary.get(bar.reference)
            if ref is None or ref.get(metric_key[bar.metric]) is None:
                row.update(verdict="SKIP", ratio=None, detail=f"no {bar.reference} reference in this run")
            elif mine.get(metric_key[bar.metric]) is None:
                row.update(verdict="FAIL", ratio=None, detail="no successful measurement")
            else:
                ratio = _ratio(mine[metric_key[bar.metric]], ref[metric_key[bar.metric]])
                if ratio is None:
                    row.update(verdict="FAIL", ratio=None, detail=f"{bar.reference} measured zero")
                    out.append(row)
                    continue
                passed = ratio >= bar.threshold if bar.metric == "rps" else ratio <= bar.threshold
                row.update(verdict="PASS" if passed else "FAIL", ratio=round(ratio, 3),
                           detail=f"{bar.metric} ratio {ratio:.2f}")
            if mine.get("flagged"):
                row["detail"] += f" [flagged: {mine.get('errors', 0)} errors, failures {mine.get('failures')}, " \
                                 f"failed checks {mine.get('failed_checks')}]"
            out.append(row)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(specs: list[TargetSpec], summary: dict[str, dict[str, Any]]) -> str:
    ref = summary.get("nginx", {})
    header = ["target", "rps", "rps/nginx", "p50 ms", "p99 ms", "p99/nginx", "CPU us/req", "CPU/req vs nginx",
              "errors", "SUT core %", "other CPU %"]
    rows = [header]
    for spec in specs:
        s = summary[spec.name]
        rps_ratio = _ratio(s["rps"], ref.get("rps"))
        p99_ratio = _ratio(s["p99_ms"], ref.get("p99_ms"))
        cpu_ratio = _ratio(s["cpu_us_per_req"], ref.get("cpu_us_per_req"))
        errors = str(s["errors"]) + (" FLAGGED" if s["flagged"] else "")
        util = s["sut_core_utilisation"]
        rows.append([spec.name, _fmt(s["rps"], ".0f"), _fmt(rps_ratio, ".2f"), _fmt(s["p50_ms"], ".2f"),
                     _fmt(s["p99_ms"], ".2f"), _fmt(p99_ratio, ".2f"), _fmt(s["cpu_us_per_req"], ".1f"),
                     "-" if cpu_ratio is None else f"{cpu_ratio:.2f}x", errors,
                     "-" if util is None else f"{util * 100:.0f}",
                     "-" if s["foreign_cores"] is None else f"{s['foreign_cores'] * 100:.0f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append(" | ".join(cells))
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


NOISY_CORES = 0.15  # other processes using more than this share of a core make rps and p99 unreliable


def render_noise(measurements: list[Measurement]) -> str | None:
    noisy = [m for m in measurements if (m.foreign_cores or 0.0) > NOISY_CORES]
    if not noisy:
        return None
    worst = max(noisy, key=lambda m: m.foreign_cores or 0.0)
    return (f"WARNING: other processes used > {NOISY_CORES * 100:.0f}% of a core during {len(noisy)} of "
            f"{len(measurements)} timed runs (worst {(worst.foreign_cores or 0) * 100:.0f}%: rep {worst.rep + 1} "
            f"{worst.target}). rps and p99 are unreliable on a busy machine; CPU us/req much less so. "
            "Rerun on a quiet machine for rps/p99 verdicts.")


def render_verdicts(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        mark = {"PASS": "PASS", "FAIL": "!!! FAIL !!!", "SKIP": "SKIP"}[row["verdict"]]
        lines.append(f"  {mark:<12} {row['target']}: {row['bar']} -> {row['detail']}")
    if any(r["verdict"] == "FAIL" for r in rows):
        banner = "!" * 78
        lines = [banner, "!!! BASTION MISSES AT LEAST ONE PERFORMANCE BAR", banner, *lines, banner]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark Bastion against nginx (see bench/README.md).")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each timed run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of all targets (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="load generator connections (default 50)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 rep of 3 s (1 s warm-up)")
    parser.add_argument("--targets", default="", help="comma-separated subset of targets (default: all)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator (auto: wrk, else the bundled Python generator)")
    parser.add_argument("--upstream", choices=["auto", "nginx", "python"], default="auto",
                        help="upstream server (auto: nginx, else the bundled Python fallback)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx or wrk")
    parser.add_argument("--sut-core", type=int, default=None, help="core of the system under test (default 0)")
    parser.add_argument("--load-core", type=int, default=None,
                        help="core of the load generator and upstream (default 1)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp directory (configs, logs)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 3.0, 1.0
    if args.reps < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--reps must be >= 1, --duration > 0, --warmup >= 0")
    return args


def select_targets(args: argparse.Namespace, nginx: NginxInfo | None) -> list[TargetSpec]:
    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    unknown = wanted - {t.name for t in TARGETS}
    if unknown:
        raise HarnessError(f"unknown targets: {', '.join(sorted(unknown))} (known: {[t.name for t in TARGETS]})")
    specs = [t for t in TARGETS if not wanted or t.name in wanted]
    if nginx is None and any(t.kind == "nginx" for t in specs):
        log("nginx is not installed: the nginx reference is skipped and ratios/bars cannot be computed")
        specs = [t for t in specs if t.kind != "nginx"]
    return specs


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("bastion") is None:
        raise HarnessError("the bastion package is not importable: run with the project's venv "
                           "(.venv/bin/python bench/run.py, or make bench)")
    tools = ensure_tools(allow_install=not args.no_install and args.loadgen != "python")
    nginx = NginxInfo.probe(tools["nginx"]) if tools["nginx"] else None
    kind = args.loadgen
    if kind == "auto":
        kind = "wrk" if tools["wrk"] else "python"
    if kind == "wrk" and not tools["wrk"]:
        raise HarnessError("--loadgen wrk but wrk is not installed")
    if kind == "python":
        log("using the bundled Python load generator: results are NOT comparable with wrk runs")
    machine = machine_info()  # before the harness pins itself to the load core
    pinning = choose_pinning(args.sut_core, args.load_core)
    if pinning.load_core is not None:
        os.sched_setaffinity(0, {pinning.load_core})  # the harness stays off the system-under-test core
    specs = select_targets(args, nginx)
    loadgen = LoadGenerator(kind, tools["wrk"], pinning, connections=args.connections)
    tmp = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    registry = ProcessRegistry(pinning)
    bench = Bench(args, registry, pinning, loadgen, nginx, tmp)
    measurements: list[Measurement] = []
    orders: list[list[str]] = []
    started_at = datetime.now(UTC)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    try:
        upstream_nginx = None if args.upstream == "python" else nginx
        if args.upstream == "nginx" and nginx is None:
            raise HarnessError("--upstream nginx but nginx is not installed")
        bench.upstream = start_upstream(registry, upstream_nginx, tmp / "upstream", pinning.load_core)
        log(f"upstream {'nginx' if upstream_nginx else 'python'} on :{bench.upstream.port}; load generator {kind}; "
            f"SUT core {pinning.sut_core}, load core {pinning.load_core}; {args.reps} rep(s) x "
            f"{len(specs)} targets x ({args.warmup:g} s warm-up + {args.duration:g} s)")
        for rep in range(args.reps):
            shift = rep % len(specs)
            order = specs[shift:] + specs[:shift]
            orders.append([s.name for s in order])
            for spec in order:
                m = bench.measure(spec, rep)
                measurements.append(m)
                if m.load is not None:
                    log(f"rep {rep + 1}/{args.reps} {spec.name:<22} {m.load.rps:>9.0f} rps  p50 "
                        f"{m.load.p50_ms:6.2f} ms  p99 {m.load.p99_ms:6.2f} ms  CPU "
                        f"{_fmt(m.cpu_us_per_req, '.1f')} us/req  errors {m.errors}"
                        + ("  FLAGGED " + json.dumps({k: v for k, v in m.checks.items() if not v.get('ok')})
                           if m.flagged else ""))
                else:
                    log(f"rep {rep + 1}/{args.reps} {spec.name}: FAILED: {m.failure}")
                if not m.ok and spec.kind in ("direct", "nginx"):
                    raise HarnessError(f"the {spec.name} reference failed: {m.failure}")
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        registry.stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = medians(specs, measurements)
    judged = verdicts(specs, summary)
    report = build_report(args, tools, nginx, kind, pinning, specs, orders, measurements, summary, judged,
                          started_at, machine)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2)
    (args.results_dir / f"{stamp}.json").write_text(text)
    (args.results_dir / "latest.json").write_text(text)

    print()
    print(f"Bastion benchmark {stamp}: median of {args.reps} rep(s), {args.duration:g} s each, "
          f"{args.connections} connections, load generator {kind}"
          + ("" if kind == "wrk" else " (NOT comparable with wrk results)")
          + f", upstream {report['settings']['upstream']}, gateway "
          + ("compiled (mypyc)" if report["versions"]["bastion_native"] else "interpreted"))
    print(render_table(specs, summary))
    noise = render_noise(measurements)
    if noise:
        print(noise)
    print()
    print("Bars:")
    print(render_verdicts(judged) if judged else "  (none)")
    print()
    print(f"Results: {args.results_dir / (stamp + '.json')} (and latest.json)")
    return 0


def build_report(args: argparse.Namespace, tools: dict[str, str | None], nginx: NginxInfo | None, kind: str,
                 pinning: Pinning, specs: list[TargetSpec], orders: list[list[str]],
                 measurements: list[Measurement], summary: dict[str, dict[str, Any]],
                 judged: list[dict[str, Any]], started_at: datetime, machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": started_at.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "settings": {
            "reps": args.reps, "duration_s": args.duration, "warmup_s": args.warmup,
            "connections": args.connections, "threads": 1, "quick": args.quick, "path": API_PATH,
            "load_generator": kind,
            "upstream": "nginx" if nginx and args.upstream != "python" else "python-fallback",
            "sut_core": pinning.sut_core, "load_core": pinning.load_core,
            "upstream_body_bytes": len(UPSTREAM_BODY),
        },
        "versions": {
            "python": platform.python_version(),
            "python_full": sys.version,
            "python_build": python_build(),
            "nginx": nginx.version if nginx else None,
            "wrk": command_output([tools["wrk"], "-v"]) if tools["wrk"] else None,
            "uvloop": package_version("uvloop"),
            "httptools": package_version("httptools"),
            "bastion": package_version("bastion-gateway"),
            "git_commit": git_commit(),
            "bastion_native": native_build(),
        },
        "machine": machine,
        "targets": [{"name": s.name, "kind": s.kind, "description": s.description,
                     "bars": [b.describe() for b in s.bars], "reference_only": s.reference_only}
                    for s in specs],
        "orders": orders,
        "reps": [m.to_json() for m in measurements],
        "medians": summary,
        "verdicts": judged,
        "all_bars_pass": all(v["verdict"] == "PASS" for v in judged),
        "noise_warning": render_noise(measurements),
    }


def native_build() -> bool:
    """Whether the gateway runs its mypyc-compiled modules (``make native``) or the interpreted sources."""
    import bastion.server.http1

    return not (bastion.server.http1.__file__ or "").endswith(".py")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except HarnessError as exc:
        print(f"bench: harness failure: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; all started processes were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
