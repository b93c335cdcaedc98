"""casd served inside the test process: the real application on a real loopback port.

An :class:`InProcessServer` does what ``casd serve`` does (bootstrap: migrations, recovery, the
admin token in the data directory; then the application of ``casd.http.app``), without the
process: no fork, no supervisor, no embedded PostgreSQL, no process logs. Each of its workers is
a thread with an event loop of its own (uvloop, as in ``casd serve``); several workers bind the
same port (SO_REUSEPORT) and share only the database and the data directory, as the worker
processes of ``casd serve`` do. Tests may block (sockets, ``subprocess.run`` of the CLI) without
stalling the server, and a test that needs a real process uses ``CasdServer`` instead.

Its interface is the one tests use on ``CasdServer``: ``url``, ``port``, ``data_dir``,
``database_url``, ``admin_token``, ``admin_headers``, ``connect_db``, ``run_cli``, ``restart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import subprocess
import threading
import traceback
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from click.testing import CliRunner

from casd.cli import main as casd_cli
from casd.config import SETTINGS, Settings, load_settings
from casd.core import open_core
from casd.maintenance import periodic_maintenance
from casd.server import IO_THREADS, bootstrap, serve_app

# Requests still in flight when a test's server stops get this long (casd serve: its
# SHUTDOWN_SECONDS).
SHUTDOWN_SECONDS = 2.0
# Whatever the fixtures set before the server starts; a server never takes this process's own.
_ENV_SETTINGS = {setting.env for setting in SETTINGS}


def settings_for(
    data_dir: Path, database_url: str, port: int, args: Sequence[str], env: dict[str, str]
) -> Settings:
    """The settings ``casd serve`` would take from these flags and CASD_* variables (only
    those given: the environment of the test process does not count)."""
    flags = {setting.flag: setting for setting in SETTINGS}
    overrides: dict[str, Any] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        flag, _, value = word.partition("=")
        negated = flag.replace("--no-", "--", 1)
        if flag in flags and flags[flag].switch:
            overrides[flags[flag].field] = True
        elif flag.startswith("--no-") and negated in flags and flags[negated].switch:
            overrides[flags[negated].field] = False
        elif flag in flags:
            overrides[flags[flag].field] = value if value else words.pop(0)
        else:
            raise ValueError(f"not a setting of casd serve: {word}")
    overrides |= {"data_dir": data_dir, "database_url": database_url, "listen": f"127.0.0.1:{port}"}
    environ = {key: value for key, value in env.items() if key in _ENV_SETTINGS}
    return load_settings(overrides, environ)


def run_coroutine_in_thread(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync fixture code, whatever loop is running."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coroutine)
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Worker(threading.Thread):
    """One worker: the application on its own event loop, serving until stopped."""

    def __init__(self, settings: Settings, database_url: str, number: int) -> None:
        super().__init__(name=f"casd-inprocess-{settings.host_port[1]}-worker-{number}")
        self.daemon = True
        self.settings = settings
        self.database_url = database_url
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._serve())
        except BaseException as error:
            self.error = error
        finally:
            self.ready.set()

    async def _serve(self) -> None:
        """What a worker of ``casd serve`` does (``casd.server.serve_http``), but for signals
        and the time requests in flight get when it stops."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._loop.set_default_executor(ThreadPoolExecutor(IO_THREADS, "casd-io"))
        async with (
            open_core(self.settings, self.database_url) as core,
            periodic_maintenance(core),
        ):
            await serve_app(core, self._stopping, self.ready.set, SHUTDOWN_SECONDS)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self.is_alive():
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=30)
        if self.is_alive():
            raise TimeoutError(f"{self.name} did not stop")


class ServerAccess:
    """How a test reaches a casd server, in this process or not: its loopback URL and the admin
    token that its first start wrote into its data directory."""

    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@dataclass
class InProcessServer(ServerAccess):
    """The casd application served in this process (see the module's docstring)."""

    data_dir: Path
    database_url: str
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    _workers: list[_Worker] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return settings_for(self.data_dir, self.database_url, self.port, self.extra_args, self.env)

    def start(self) -> InProcessServer:
        self.port = self.port or free_port()
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        run_coroutine_in_thread(bootstrap(settings, self.database_url))
        self._workers = [
            _Worker(settings, self.database_url, number) for number in range(settings.workers)
        ]
        for worker in self._workers:
            worker.start()
        for worker in self._workers:
            worker.ready.wait(timeout=60)
            if worker.error is not None or not worker.ready.is_set():
                self.stop()
                raise RuntimeError(f"{worker.name} did not start") from worker.error
        return self

    def stop(self) -> None:
        """Stop serving: requests in flight get ``SHUTDOWN_SECONDS``, then the pools close."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()
        errors = [worker.error for worker in workers if worker.error is not None]
        if errors:
            raise RuntimeError("an in-process worker failed") from errors[0]

    def restart(self) -> InProcessServer:
        self.stop()
        return self.start()

    def run_cli(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """An administrative casd command on this server's data directory and database, run
        in this process (the command's own code, without a process): see ``run_casd_cli``."""
        arguments = [*args, "--data-dir", str(self.data_dir), "--database-url", self.database_url]
        return run_casd_cli(arguments, env)

    async def connect_db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)


CliResult = subprocess.CompletedProcess[str]
_cli_lock = threading.Lock()


def run_casd_cli(args: Sequence[str], env: dict[str, str] | None = None) -> CliResult:
    """``casd ARGS`` in this process, in a thread of its own (the command runs its own event
    loop); the result reads like ``subprocess.run``'s. Only for commands that print and exit:
    output goes through click's runner, which replaces ``sys.stdout`` while it runs, so
    commands run one at a time."""
    outcome: dict[str, Any] = {}

    def invoke() -> None:
        runner = CliRunner()
        result = runner.invoke(casd_cli, list(args), env=env, catch_exceptions=True)
        outcome["result"] = result

    with _cli_lock:  # click's runner swaps sys.stdout: one command at a time
        thread = threading.Thread(target=invoke, name="casd-cli")
        thread.start()
        thread.join()
    result = outcome["result"]
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = io.StringIO()
        traceback.print_exception(result.exception, file=trace)
        stderr += trace.getvalue()
    return subprocess.CompletedProcess(
        ["casd", *args], result.exit_code, stdout=result.stdout, stderr=stderr
    )
