"""Process plumbing for the benchmark: tools, CPU pinning, child processes, CPU accounting, HTTP probes.

Everything here is stdlib-only so the harness works before anything else is installed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent

UPSTREAM_BODY = b'{"id":1,"name":"item","price":9.99,"tags":["a","b"],"ok":true}'
API_PATH = "/api/v1/items"


class HarnessError(RuntimeError):
    """The harness itself failed (as opposed to a target missing a bar)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- tools --------------------------------------------------------------------------------------------
def find_binary(name: str) -> str | None:
    """`shutil.which`, also looking in the sbin directories a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/local/bin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _apt_install(packages: list[str], updated: list[bool]) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not updated[0]:
        log("apt-get update")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
        updated[0] = True
    log(f"apt-get install -y {' '.join(packages)}")
    result = subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        log(f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-400:]}")
    return result.returncode == 0


def ensure_tools(allow_install: bool) -> dict[str, str | None]:
    """Paths of nginx and wrk, installing them with apt-get (as root, on Debian) when missing."""
    tools: dict[str, str | None] = {"nginx": find_binary("nginx"), "wrk": find_binary("wrk")}
    missing = [name for name, path in tools.items() if path is None]
    if not missing:
        return tools
    can_apt = allow_install and os.geteuid() == 0 and find_binary("apt-get") is not None
    if not can_apt:
        log(f"missing {', '.join(missing)} and cannot install (needs root, apt-get and no --no-install)")
        return tools
    updated = [False]
    if tools["nginx"] is None and not _apt_install(["nginx-light"], updated):
        _apt_install(["nginx"], updated)  # Debian releases without the -light flavour
    if tools["wrk"] is None:
        _apt_install(["wrk"], updated)
    return {"nginx": find_binary("nginx"), "wrk": find_binary("wrk")}


def command_output(argv: list[str]) -> str:
    """First line of a version command's output (nginx -v prints to stderr, wrk -v exits 1)."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def python_build() -> dict[str, object]:
    """How the interpreter running the harness (and Bastion, which it starts with the same one) was
    built: a PGO/LTO build with a static libpython runs Bastion measurably faster than a plain one."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    return {
        "executable": os.path.realpath(sys.executable),
        "implementation": platform.python_implementation(),
        "compiler": platform.python_compiler(),
        "config_args": sysconfig.get_config_var("CONFIG_ARGS"),
        "cflags": sysconfig.get_config_var("PY_CFLAGS"),
        "libpython_shared": "libpython" in maps,
    }


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False)
    except OSError:
        return None
    return result.stdout.strip() or None


def machine_info() -> dict[str, object]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
    }


# -- CPU accounting -----------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name sits in parentheses and may hold spaces: split after the last ')'
    return raw[raw.rindex(")") + 2:].split()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kids
    for task in tasks:
        with contextlib.suppress(OSError):
            kids.extend(int(x) for x in (task / "children").read_text().split())
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its live descendants (threads are included by the kernel),
    plus what its already-reaped children used (cutime + cstime)."""
    total = 0
    seen: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        fields = _stat_fields(current)
        if fields is None:
            continue
        # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        stack.extend(_children(current))
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat, everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU seconds of the harness and of its reaped children (wrk or the Python load generator)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# -- processes ----------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Pinning:
    sut_core: int | None
    load_core: int | None
    use_taskset: bool = True

    def prefix(self, core: int | None) -> list[str]:
        if core is None or not self.use_taskset:
            return []
        return ["taskset", "-c", str(core)]


def choose_pinning(sut_core: int | None, load_core: int | None) -> Pinning:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        log("fewer than 2 usable cores: running unpinned, numbers will be noisy")
        return Pinning(None, None, use_taskset=False)
    sut = cores[0] if sut_core is None else sut_core
    load = cores[1] if load_core is None else load_core
    if sut not in cores or load not in cores or sut == load:
        raise HarnessError(f"cores {sut} and {load} must be distinct and in the affinity set {cores}")
    return Pinning(sut, load, use_taskset=find_binary("taskset") is not None)


@dataclass
class ProcessRegistry:
    """Every child the bench starts, each in its own session (so Ctrl-C reaches only the harness),
    stopped by PID in `stop_all`, which the harness calls from a finally block."""

    pinning: Pinning
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log_path: Path, *, core: int | None,
              env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
              cwd: Path | None = None) -> Proc:
        full = self.pinning.prefix(core) + argv
        preexec = None
        if core is not None and not self.pinning.use_taskset:
            pinned = core

            def preexec() -> None:
                os.sched_setaffinity(0, {pinned})

        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(full, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, pass_fds=pass_fds, cwd=cwd, start_new_session=True,
                                     preexec_fn=preexec)  # noqa: PLW1509
        proc = Proc(name, full, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the child by PID and wait; if it does not exit, or leaves processes behind in its
        group (e.g. an nginx worker whose master died), SIGKILL that group. The group id is the
        child's own PID, since it was started in a new session."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} (pid {proc.pid}) ignored signal {sig}; killing its process group")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: the id is ours
        if group_members(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=5.0)


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid` (a group lives, and keeps its id, while it has members)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == pgid:  # state(0) ppid(1) pgrp(2)
            members.append(int(entry.name))
    return members


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket a child inherits (no race between choosing a port and binding it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


# -- HTTP probes --------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    ok: bool
    responses: int  # HTTP responses the target answered (they count in its metrics)
    detail: str


def http_get(host: str, port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_body(host: str, port: int, path: str, expected: bytes, *, headers: dict[str, str] | None = None,
                  timeout: float = 20.0, proc: Proc | None = None) -> ProbeResult:
    """Poll until the target answers 200 with exactly the upstream's body."""
    deadline = time.monotonic() + timeout
    responses = 0
    detail = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return ProbeResult(False, responses, f"{proc.name} exited with {proc.popen.returncode}")
        try:
            status, body = http_get(host, port, path, headers)
        except (OSError, http.client.HTTPException) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
            continue
        responses += 1
        if status == 200 and body == expected:
            return ProbeResult(True, responses, "ok")
        detail = f"status {status}, body {body[:200]!r}"
        time.sleep(0.1)
    return ProbeResult(False, responses, detail)


def prometheus_sum(text: str, metric: str, labels: dict[str, str]) -> float:
    """Sum of the samples of `metric` whose labels include `labels`."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(metric)}\{{(.*?)\}}\s+(\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total
