"""The worker processes of ``casd serve``: started, watched, restarted with backoff, stopped.

The serving process (the supervisor) owns the embedded PostgreSQL and forks N workers, each of
which binds the port with SO_REUSEPORT and serves HTTP. A worker tells the supervisor when it
accepts connections; a worker that dies is restarted after a delay that doubles with every
failure in a row (0.25 s up to 10 s). A worker that served for 30 s before it died starts a new
series. When a worker fails more than ``worker_restarts`` times in a row, casd stops every
worker and exits 1, so that a service manager (``Restart=on-failure``) takes over.

Why not gunicorn's aiohttp worker: gunicorn's arbiter respawns a dying worker at once and
forever (it only halts when a worker fails to import the application), so a crash loop never
ends and never reaches the service manager; casd also needs its bootstrap (database,
migrations, admin token) done once before any worker starts and the embedded PostgreSQL kept
up while workers come and go, which here is a plain ``with`` around the supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType

import setproctitle

from casd.config import Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
STOP_GRACE = 75.0  # a worker drains its requests for up to 60 s (aiohttp) before it is killed

# A worker: runs until SIGTERM, calls ``ready()`` once it accepts connections.
WorkerTarget = Callable[[int, Callable[[], None]], None]


def prepare_to_serve(settings: Settings) -> None:
    """Before anything else: the port is ours, and this server's metric files start afresh.

    Must run before ``prometheus_client`` is imported: its multiprocess mode is chosen then."""
    check_port_free(settings)
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its directory was set")
    directory = settings.metrics_dir
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def check_port_free(settings: Settings) -> None:
    """Fail before starting anything if another program holds the port (SO_REUSEPORT would let
    two casd servers silently share it)."""
    host, port = settings.host_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SystemExit(
                f"casd: cannot listen on {settings.listen}: {error.strerror}"
            ) from error


def set_title(title: str) -> None:
    """What ps and top show for this process."""
    setproctitle.setproctitle(title)


@dataclass
class Slot:
    """One of the N workers, across its restarts."""

    number: int
    process: BaseProcess | None = None
    ready_pipe: Connection | None = None
    ready_at: float | None = None
    failures: int = 0  # deaths in a row
    restart_at: float | None = None


class Supervisor:
    """Keeps ``count`` workers running until SIGTERM or SIGINT; ``run()`` is the exit status."""

    def __init__(
        self,
        target: WorkerTarget,
        count: int,
        max_restarts: int,
        *,
        title: str,
        on_serving: Callable[[], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self.target = target
        self.slots = [Slot(number) for number in range(1, count + 1)]
        self.max_restarts = max_restarts
        self.title = title
        self.on_serving = on_serving
        self.on_exit = on_exit  # a worker's pid, once it is gone
        self.context = multiprocessing.get_context("fork")
        self.serving = False
        self.stopping = False
        self.stop_signal: int | None = None
        self.exit_status = 0

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            for slot in self.slots:
                self._start(slot)
            while not self.stopping:
                self._step(wake_r)
            if self.stop_signal is not None:
                log.info("%s: stopping the workers", signal.Signals(self.stop_signal).name)
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        return self.exit_status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stop_signal = signum
        self.stopping = True

    def _step(self, wake_r: int) -> None:
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        pipes = {slot.ready_pipe: slot for slot in self.slots if slot.ready_pipe is not None}
        sentinels = {slot.process.sentinel: slot for slot in self.slots if slot.process is not None}
        ready = multiprocessing.connection.wait([wake_r, *pipes, *sentinels], timeout)
        if wake_r in ready:
            _drain(wake_r)
        for pipe, slot in pipes.items():
            if pipe in ready:
                self._read_ready(slot)
        for sentinel, slot in sentinels.items():
            if sentinel in ready:
                self._reap(slot)
        now = time.monotonic()
        for slot in self.slots:
            if not self.stopping and slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)

    def _start(self, slot: Slot) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(self.target, slot.number, writer, os.getpid(), f"{self.title} worker"),
            name=f"casd-worker-{slot.number}",
        )
        slot.restart_at = None
        try:
            process.start()
        except OSError as error:  # no memory or processes left to fork
            reader.close()
            log.error("cannot start worker %d: %s", slot.number, error)
            self._failed(slot, f"could not start ({error})")
            return
        finally:
            writer.close()
        slot.process, slot.ready_pipe = process, reader
        log.debug("started worker %d (pid %s)", slot.number, process.pid)

    def _read_ready(self, slot: Slot) -> None:
        assert slot.ready_pipe is not None and slot.process is not None
        try:
            slot.ready_pipe.recv()
        except (EOFError, OSError):  # it died first; its sentinel tells
            pass
        else:
            slot.ready_at = time.monotonic()
            if self.serving:
                log.info("worker %d (pid %s) serves again", slot.number, slot.process.pid)
            elif all(other.ready_at is not None for other in self.slots):
                self.serving = True
                self.on_serving()
        slot.ready_pipe.close()
        slot.ready_pipe = None

    def _reap(self, slot: Slot) -> None:
        assert slot.process is not None
        process = slot.process
        process.join()
        stable = slot.ready_at is not None and time.monotonic() - slot.ready_at >= STABLE_AFTER
        if slot.ready_pipe is not None:
            slot.ready_pipe.close()
        slot.process, slot.ready_pipe, slot.ready_at = None, None, None
        if process.pid is not None:
            self.on_exit(process.pid)
        if self.stopping:
            return
        if stable:
            slot.failures = 0
        self._failed(slot, f"(pid {process.pid}) {_describe_exit(process.exitcode)}")

    def _failed(self, slot: Slot, what: str) -> None:
        slot.failures += 1
        if slot.failures > self.max_restarts:
            log.critical(
                "worker %d %s, %d time(s) in a row: casd cannot keep its workers up and stops",
                slot.number,
                what,
                slot.failures,
            )
            self.stopping, self.exit_status = True, 1
            return
        delay = min(BACKOFF_FIRST * 2 ** (slot.failures - 1), BACKOFF_MAX)
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "worker %d %s; restarting it in %.2f s (failure %d in a row, casd gives up after %d)",
            slot.number,
            what,
            delay,
            slot.failures,
            self.max_restarts + 1,
        )

    def _stop_all(self) -> None:
        """SIGTERM to every worker; after STOP_GRACE, SIGKILL to those still there."""
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            if process.pid is not None:
                _signal(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None and process.pid is not None:
                log.error("worker (pid %s) did not stop in %.0f s: killed", process.pid, STOP_GRACE)
                _signal(process.pid, signal.SIGKILL)
                process.join()
            if process.pid is not None:
                self.on_exit(process.pid)
        for slot in self.slots:
            slot.process, slot.restart_at = None, None
            if slot.ready_pipe is not None:
                slot.ready_pipe.close()
                slot.ready_pipe = None


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _worker_main(
    target: WorkerTarget, number: int, ready_pipe: Connection, supervisor: int, title: str
) -> None:
    """The first code of a forked worker: die with the supervisor, forget its signal set-up."""
    _die_with_parent()
    if os.getppid() != supervisor:  # it died before the line above
        os._exit(1)
    signal.set_wakeup_fd(-1)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    set_title(f"{title} {number}")

    def ready() -> None:
        ready_pipe.send("ready")
        ready_pipe.close()

    target(number, ready)


def _die_with_parent() -> None:
    """A worker gets SIGKILL when the supervisor dies (kill -9 included): no orphan keeps
    serving the port of a casd that is gone (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
