"""Fixtures: a real PostgreSQL, casd served in the test process or as real subprocesses on
loopback ports, real HTTP.

PostgreSQL is ``CASD_TEST_DATABASE_URL`` when set, else one embedded cluster for each pytest
process (``make test`` runs three: see ``GroupScheduling``); every casd server gets a fresh
database of its own (a copy of one migrated once per process) and a fresh data directory.

Every test has one tier (markers registered in pyproject.toml), given by the fixtures it uses
unless it names one itself: ``e2e`` with a ``casd serve`` fixture (``server``,
``module_server``, ``casd_server_factory``), ``http`` with an in-process server
(``http_server``, ``module_http_server``, ``http_server_factory``: tests/inprocess.py),
``service`` with PostgreSQL only (``service``, ``postgres_url``), ``unit`` otherwise. A test
outside ``e2e`` that starts a casd process fails, so ``make test-fast`` (everything but
``e2e``) stays fast.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from xdist.scheduler import LoadScopeScheduling

from casd.config import Settings, metrics_dir_of
from casd.core import Core, open_core
from casd.embedded import EmbeddedPostgres
from tests.inprocess import (
    InProcessServer,
    ServerAccess,
    run_casd_cli,
    run_coroutine_in_thread,
)
from tests.inprocess import free_port as free_port  # tests import it from here
from tests.seaweed import S3Area, SeaweedFS, new_area

TIERS = ("unit", "service", "http", "e2e", "multinode")
PROCESS_TIERS = ("e2e", "multinode")  # the tiers that may start casd processes
# The tier that a fixture brings, by its name or by what it returns or yields (a fixture of a
# test module that starts a server of its own, say); the highest of a test's fixtures wins.
TIER_OF_FIXTURE = {
    "server": "e2e",
    "module_server": "e2e",
    "casd_server_factory": "e2e",
    "http_server": "http",
    "module_http_server": "http",
    "http_server_factory": "http",
    "service": "service",
    "postgres_url": "service",
    # SeaweedFS is a real process (a store, like PostgreSQL): not a unit test any more.
    "seaweedfs": "service",
}
TIER_OF_RETURNED = (
    (re.compile(r"\b(CasdServer|ServerFactory)\b"), "e2e"),
    (re.compile(r"\b(InProcessServer|HttpServerFactory)\b"), "http"),
)


def _tier_of_fixture(fixture: Any) -> str:
    returned = str(getattr(fixture.func, "__annotations__", {}).get("return", ""))
    for pattern, tier in TIER_OF_RETURNED:
        if pattern.search(returned):
            return tier
    return TIER_OF_FIXTURE.get(fixture.argname, "unit")


def tier_of(item: pytest.Item) -> str:
    named = [tier for tier in TIERS if item.get_closest_marker(tier)]
    if len(named) > 1:
        raise pytest.UsageError(f"{item.nodeid} is in several tiers: {named}")
    if named:
        return named[0]
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info else []
    # The last definition of a name is the one in effect (a test module's own overrides).
    used = {_tier_of_fixture(chain[-1]) for chain in definitions if chain}
    return max(used, key=TIERS.index, default="unit")


# `make test` runs the suite in several pytest processes (pytest-xdist, `-n`): one process keeps
# less than one core busy while its tests wait on casd, PostgreSQL and SeaweedFS. A module is one
# unit of work, so its module-scoped servers start once; the tests of the object store (a
# module or a parameter named s3) form one unit, so one SeaweedFS starts, not one per process.
OBJECT_STORE_GROUP = "object-store"
# The cost of a test by tier, to hand the costliest units out first: a unit of work that
# starts late must not leave the other processes idle at the end.
TIER_COST = {"unit": 0.0, "service": 0.1, "http": 0.3, "e2e": 2.0, "multinode": 5.0}
SLOW_COST = 30.0  # a test marked ``slow`` runs for tens of seconds


def group_of(nodeid: str) -> str:
    """The unit of work of a parallel run that a test belongs to (its module, mostly)."""
    module, _, test = nodeid.partition("::")
    if "s3" in Path(module).stem.split("_") or test.endswith("[s3]"):
        return OBJECT_STORE_GROUP
    return module


class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no types
    """pytest-xdist's scope scheduling with ``group_of`` as the scope, in collection order."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's, which `-p no:xdist` leaves out
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupScheduling | None:
    """``-n`` (its default ``--dist load`` included) schedules by units of work; another
    ``--dist`` is obeyed."""
    if config.getoption("dist") != "load":
        return None
    # Collection already put the costliest units first (longest_groups_first): keep that order
    # rather than xdist's (the units with the most tests first).
    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


def cost_of(item: pytest.Item) -> float:
    return SLOW_COST if item.get_closest_marker("slow") else TIER_COST[tier_of(item)]


def longest_groups_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The items reordered so that the costliest unit of work comes first and, within a unit,
    its slow tests: while they run, the process still has the unit's other tests to come, so
    xdist hands it no further unit that would wait behind them."""
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        group = group_of(item.nodeid)
        cost[group] = cost.get(group, 0.0) + cost_of(item)
        first.setdefault(group, index)

    def order(item: pytest.Item) -> tuple[float, int, bool]:
        group = group_of(item.nodeid)
        return (-cost[group], first[group], item.get_closest_marker("slow") is None)

    return sorted(items, key=order)


def check_object_store_group(item: pytest.Item) -> None:
    """A test on SeaweedFS must be in the object store's unit (else it starts another)."""
    if "seaweedfs" in getattr(item, "fixturenames", ()) and group_of(item.nodeid) != (
        OBJECT_STORE_GROUP
    ):
        raise pytest.UsageError(f"{item.nodeid} uses SeaweedFS: name its module or id s3")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Generator[None, None, None]:
    """Tiers before any other plugin looks at the items (``-m e2e``); the order of a parallel
    run after ``-m`` and ``-k`` deselected what they do (the costs of the tests that run)."""
    for item in items:
        item.add_marker(tier_of(item))
        check_object_store_group(item)
    yield
    items[:] = longest_groups_first(items)


# The running test's tier: outside e2e, starting casd (in the test or in a fixture it sets up)
# is an error, so a test that needs a casd process cannot hide in `make test-fast`.
_running_tier: list[str] = []
_popen_init = subprocess.Popen.__init__


def _starts_casd(args: Any) -> bool:
    words = [str(word) for word in ([args] if isinstance(args, str | bytes | Path) else args)]
    program = Path(words[0]).name if words else ""
    return program == "casd" or ("-m" in words[1:3] and "casd" in words[1:3])


def _guarded_popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
    if _running_tier and _running_tier[0] not in PROCESS_TIERS and _starts_casd(args):
        raise RuntimeError(f"a {_running_tier[0]} test starts casd: mark it e2e")
    _popen_init(self, args, *rest, **kw)


subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _running_tier[:] = [tier_of(item)]
    try:
        return (yield)
    finally:
        _running_tier.clear()


def with_database_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server_url: str, *, migrated: bool = False) -> str:
    """A fresh database on the PostgreSQL server; ``migrated``: with every migration applied
    (a copy of a database migrated once per session: copying is much cheaper than migrating)."""
    name = f"casd_test_{uuid.uuid4().hex[:12]}"
    template = _migrated_template(server_url) if migrated else None
    clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""

    async def create() -> None:
        connection = await asyncpg.connect(server_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await connection.close()

    run_coroutine_in_thread(create())
    return with_database_name(server_url, name)


_templates: dict[str, str] = {}
_templates_lock = threading.Lock()


def _migrated_template(server_url: str) -> str:
    """The name of this session's migrated template database on that server."""
    from casd.database import migrate

    with _templates_lock:
        if server_url not in _templates:
            url = create_database(server_url)
            run_coroutine_in_thread(migrate(url))
            _templates[server_url] = urlsplit(url).path.lstrip("/")
        return _templates[server_url]


@pytest.fixture(scope="session", autouse=True)
def client_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Client commands keep their config and state in directories of the test session, never
    in the user's home (a developer's ~/.config/casd must not change what tests see)."""
    home = tmp_path_factory.mktemp("client-home")
    saved = {key: os.environ.get(key) for key in ("XDG_CONFIG_HOME", "XDG_STATE_HOME")}
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    os.environ["XDG_STATE_HOME"] = str(home / "state")
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# The session's cluster is scratch: no fsync (what a test kills is a process, never the
# machine, so every commit PostgreSQL acknowledged still survives; synchronous_commit stays on).
SCRATCH_SETTINGS = ("fsync=off", "full_page_writes=off")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("CASD_TEST_DATABASE_URL")
    if external:
        yield external
        return
    pgdata = tmp_path_factory.mktemp("pg") / "postgres"
    with EmbeddedPostgres(pgdata, SCRATCH_SETTINGS) as embedded:
        yield embedded.url


@dataclass
class CasdServer(ServerAccess):
    """A ``casd serve`` subprocess."""

    data_dir: Path
    database_url: str | None  # None: embedded PostgreSQL in data_dir
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def command(self, *args: str) -> list[str]:
        """A casd CLI command line aimed at this server's data directory and database."""
        base = [sys.executable, "-m", "casd", *args, "--data-dir", str(self.data_dir)]
        return base + (["--database-url", self.database_url] if self.database_url else [])

    def start(self, timeout: float = 60) -> CasdServer:
        args = [*self.command("serve"), "--listen", f"127.0.0.1:{self.port}", *self.extra_args]
        environment = {**os.environ, "CASD_LOG_LEVEL": "INFO", **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"casd exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"casd did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.returncode != 0:  # casd removes them when it stops, not when killed
            shutil.rmtree(metrics_dir_of(self.data_dir, self.port), ignore_errors=True)
        return self.process.returncode

    def restart(self) -> CasdServer:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def run_cli(
        self, *args: str, env: dict[str, str] | None = None, process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run an administrative casd command against this server's data and database: in the
        test process (the command's own code, without the second or so a process costs; see
        ``run_casd_cli``) unless ``process`` says otherwise or the database is the embedded
        one, which a command joins and leaves as a process of its own."""
        if self.database_url and not process:
            database = ["--data-dir", str(self.data_dir), "--database-url", self.database_url]
            return run_casd_cli([*args, *database], env)
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
            check=False,
        )

    async def connect_db(self) -> asyncpg.Connection:
        assert self.database_url is not None, "embedded servers: use a server with database_url"
        return await asyncpg.connect(self.database_url)


ServerFactory = Callable[..., CasdServer]
# What most tests need of a server, whichever kind: url, port, data_dir, database_url,
# admin_token, admin_headers, run_cli, connect_db, restart.
AnyServer = CasdServer | InProcessServer


@pytest.fixture
def casd_server_factory(tmp_path: Path, postgres_url: str) -> Iterator[ServerFactory]:
    started: list[CasdServer] = []

    def start(
        *extra_args: str,
        embedded: bool = False,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        database_url: str | None = None,
        start: bool = True,
    ) -> CasdServer:
        url = None if embedded else (database_url or create_database(postgres_url, migrated=True))
        directory = data_dir or tmp_path / f"data{len(started)}"
        server = CasdServer(directory, url, list(extra_args), dict(env or {}))
        started.append(server)
        return server.start() if start else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(casd_server_factory: ServerFactory) -> CasdServer:
    return casd_server_factory()


@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[CasdServer]:
    """One server shared by the tests of a module that do not disturb each other."""
    directory = tmp_path_factory.mktemp("module") / "data"
    server = CasdServer(directory, create_database(postgres_url, migrated=True)).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        yield session


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 store for the session (tests/seaweed.py), bucket ``casd`` created."""
    workdir = tmp_path_factory.mktemp("seaweedfs")
    seaweed = SeaweedFS(workdir).start()
    try:
        yield seaweed
    finally:
        seaweed.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_area(seaweedfs: SeaweedFS) -> S3Area:
    """A fresh key prefix of the session's SeaweedFS: ``s3_area.url`` for --blob-store,
    ``s3_area.env()`` for a casd process, ``s3_area.client()`` for raw S3 requests."""
    return new_area(seaweedfs)


@pytest.fixture
async def database_url(postgres_url: str) -> str:
    """A fresh database of the session's PostgreSQL with every migration applied."""
    return await asyncio.to_thread(create_database, postgres_url, migrated=True)


@pytest.fixture
async def service(tmp_path: Path, postgres_url: str) -> AsyncIterator[Core]:
    """The services without HTTP: a core (casd.core) on a fresh migrated database of the
    session's PostgreSQL and a data directory in ``tmp_path``, in the test's event loop."""
    url = await asyncio.to_thread(create_database, postgres_url, migrated=True)
    async with open_core(Settings(data_dir=tmp_path / "data"), url, pool_size=4) as core:
        yield core


HttpServerFactory = Callable[..., InProcessServer]


@pytest.fixture
def http_server_factory(tmp_path: Path, postgres_url: str) -> Iterator[HttpServerFactory]:
    """Starts casd in the test process (tests/inprocess.py), each on a fresh database unless
    ``database_url`` says otherwise; the arguments are those of ``casd_server_factory``."""
    started: list[InProcessServer] = []

    def start(
        *extra_args: str,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        database_url: str | None = None,
        start: bool = True,
    ) -> InProcessServer:
        url = database_url or create_database(postgres_url, migrated=True)
        directory = data_dir or tmp_path / f"data{len(started)}"
        server = InProcessServer(directory, url, list(extra_args), dict(env or {}))
        started.append(server)
        return server.start() if start else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def http_server(http_server_factory: HttpServerFactory) -> InProcessServer:
    """A fresh casd served in the test process."""
    return http_server_factory()


@pytest.fixture(scope="module")
def module_http_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[InProcessServer]:
    """One in-process casd shared by the tests of a module that do not disturb each other."""
    directory = tmp_path_factory.mktemp("module") / "data"
    server = InProcessServer(directory, create_database(postgres_url, migrated=True)).start()
    yield server
    server.stop()
