"""Load generation: wrk (preferred) or the bundled Python generator, with one result shape for both."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import BENCH, HarnessError, Pinning

_LATENCY_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class LoadResult:
    generator: str  # "wrk" or "python"
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    raw: str = ""

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        return data


def _latency_ms(value: str, unit: str) -> float:
    return float(value) * _LATENCY_UNITS_MS[unit]


def parse_wrk(output: str) -> LoadResult:
    """Parse `wrk --latency` output. Raises HarnessError when a field is missing."""
    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise HarnessError(f"cannot parse wrk output (no match for {pattern!r}):\n{output}")
        return match

    total = need(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
    rps = need(r"^Requests/sec:\s+([\d.]+)")
    p50 = need(r"^\s*50(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    p99 = need(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    errors: dict[str, int] = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock is not None:
        errors = dict(zip(errors, (int(g) for g in sock.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return LoadResult(
        generator="wrk",
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _DURATION_UNITS_S[total.group(3)],
        rps=float(rps.group(1)),
        p50_ms=_latency_ms(p50.group(1), p50.group(2)),
        p99_ms=_latency_ms(p99.group(1), p99.group(2)),
        socket_errors=errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        raw=output,
    )


@dataclass
class LoadGenerator:
    """Runs one load phase against a URL, pinned to the load core."""

    kind: str  # "wrk" or "python"
    wrk_path: str | None
    pinning: Pinning
    connections: int = 50
    threads: int = 1

    def run(self, url: str, seconds: float, headers: dict[str, str] | None = None) -> LoadResult:
        header_args: list[str] = []
        for name, value in (headers or {}).items():
            header_args += ["-H", f"{name}: {value}"]
        timeout = seconds + 60
        prefix = self.pinning.prefix(self.pinning.load_core)
        if self.kind == "wrk":
            assert self.wrk_path is not None
            duration = f"{max(1, round(seconds))}s"
            argv = [*prefix, self.wrk_path, f"-t{self.threads}", f"-c{self.connections}", f"-d{duration}",
                    "--latency", *header_args, url]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            if result.returncode != 0:
                raise HarnessError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
            return parse_wrk(result.stdout)
        argv = [*prefix, sys.executable, str(BENCH / "loadgen.py"), url, "-c", str(self.connections),
                "-d", str(seconds), "--json", *header_args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise HarnessError(f"python load generator failed ({result.returncode}): {result.stderr}")
        data = json.loads(result.stdout)
        return LoadResult(
            generator="python", requests=int(data["requests"]), seconds=float(data["seconds"]),
            rps=float(data["rps"]), p50_ms=float(data["latency_ms"]["p50"]),
            p99_ms=float(data["latency_ms"]["p99"]), socket_errors=dict(data["socket_errors"]),
            non_2xx_3xx=int(data["non_2xx_3xx"]), raw=result.stdout,
        )
