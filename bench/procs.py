"""Processes the harness starts (servers on loopback ports) and what it reads about them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class Service:
    """A server subprocess with its output in a log file; stopped by its own pid only."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: dict[str, str]):
        self.cwd = log_path.parent
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_http(self, url: str, timeout: float = 60, ok: Sequence[int] = (200,)) -> None:
        """Wait until ``url`` answers with one of ``ok``; fail early if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status in ok:
                        return
            except urllib.error.HTTPError as error:
                if error.code in ok:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not answer {url}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Our own process group only (started with start_new_session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def tree(self) -> list[int]:
        """This process and its descendants."""
        return [self.pid, *descendants(self.pid)]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` style field of /proc/PID/status in KiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """The peak resident set of a group of processes over a span of time, from the kernel's own
    high-water mark (reset through /proc/PID/clear_refs), so no sampling can miss a peak."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)

    def reset(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def current_mib(self) -> float:
        return max(status_kib(pid, "VmRSS") for pid in self.pids) / 1024

    def peak_mib(self) -> float:
        """The largest peak of any one process of the group (each worker holds its own)."""
        return max(status_kib(pid, "VmHWM") for pid in self.pids) / 1024


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_of_stat(path: Path) -> float:
    try:
        fields = path.read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


class CpuMeter:
    """CPU seconds a group of processes spent over a span: all threads, and the main threads
    alone (the event loops: one stream's ceiling is what its loop can do per second)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start = self.sample()

    def sample(self) -> tuple[float, float]:
        loops = sum(_cpu_of_stat(Path(f"/proc/{pid}/task/{pid}/stat")) for pid in self.pids)
        total = sum(_cpu_of_stat(Path(f"/proc/{pid}/stat")) for pid in self.pids)
        return loops, total

    def spent(self) -> tuple[float, float]:
        loops, total = self.sample()
        return loops - self.start[0], total - self.start[1]


def run(command: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a client command (curl, wrk) and return its standard output; fail loudly."""
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[0]} exited {result.returncode}: {result.stderr.strip()[-500:]}"
        )
    return result.stdout
