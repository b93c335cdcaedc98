"""``casd serve``: database, migrations, first-start bootstrap, then one or more HTTP workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator

import uvloop
from aiohttp import web
from prometheus_client import multiprocess

from casd import metrics
from casd.config import Settings
from casd.core import Core, open_core
from casd.database import migrate
from casd.embedded import EmbeddedPostgres
from casd.errors import CasdError
from casd.http.accesslog import AccessLogger
from casd.http.app import create_app
from casd.logs import configure_logging
from casd.maintenance import periodic_maintenance
from casd.supervisor import Supervisor, set_title

log = logging.getLogger(__name__)

# Blob I/O and fsync run in threads; many concurrent uploads each wait on one fsync.
IO_THREADS = 64
# As a worker stops, requests in flight get this long to finish (aiohttp's default).
SHUTDOWN_SECONDS = 60.0

# The longest a single request may stage bytes: staging older than this (in a store that cannot
# tell a live writer, S3) was abandoned by a writer that died.
STAGING_LIFETIME = 24 * 3600.0


@contextlib.contextmanager
def database_url_for(settings: Settings) -> Iterator[str]:
    """The configured PostgreSQL, or the embedded one in the data directory while in use."""
    if settings.database_url:
        yield settings.database_url
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedPostgres(settings.postgres_dir) as embedded:
        yield embedded.url


async def bootstrap(settings: Settings, database_url: str) -> None:
    """Everything that happens once per start, before any request is served."""
    applied = await migrate(database_url)
    if applied:
        log.info("applied migrations %s", applied)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the admin token goes there
    async with open_core(settings, database_url, pool_size=2, listen=False) as core:
        capabilities = await core.store.check()  # a store that cannot be used: stop here
        log.info("blob store: %s (%s)", capabilities.backend, capabilities.detail)
        await core.uploads.recover_after_crash()
        await core.store.sweep_staging(older_than=STAGING_LIFETIME)
        secret = await core.tokens.create_admin_if_first()
    if secret is not None:
        write_admin_token(settings, secret)


def write_admin_token(settings: Settings, secret: str) -> None:
    path = settings.admin_token_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    path.chmod(0o600)
    log.info("created the admin token in %s", path)


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status (1: the workers could not be kept up).

    Call ``casd.supervisor.prepare_to_serve`` before importing this module."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("casd.supervisor.prepare_to_serve() must come first")
    # No logging thread here: this process forks its workers, and a fork copies no thread.
    configure_logging(settings.log_level, settings.log_format, threaded=False)
    set_title(f"casd serve: supervisor {settings.listen} {settings.data_dir}")
    try:
        status = supervise(settings)
    except CasdError as error:  # the database is unreachable, say
        log.critical("casd cannot serve: %s: %s", error.code, error.detail)
        status = 1
    except Exception:
        log.critical("casd cannot serve", exc_info=True)
        status = 1
    finally:
        shutil.rmtree(settings.metrics_dir, ignore_errors=True)  # nobody reads them any more
    if status:
        log.error("casd stopped with status %d", status)
    else:
        log.info("casd stopped")
    return status


def supervise(settings: Settings) -> int:
    """The database (embedded or not) and the bootstrap, then the workers until told to stop."""
    with database_url_for(settings) as database_url:
        asyncio.run(bootstrap(settings, database_url))
        supervisor = Supervisor(
            functools.partial(run_worker, settings, database_url),
            settings.workers,
            settings.worker_restarts,
            title=f"casd serve: {settings.listen}",
            on_serving=lambda: log.info(
                "casd serving on http://%s with %d worker(s)", settings.listen, settings.workers
            ),
            on_exit=worker_gone,
        )
        return supervisor.run()


def worker_gone(pid: int) -> None:
    """Its counters stay in the metric files; its in-flight gauges go."""
    metrics.WORKER_EXITS.inc()
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def run_worker(
    settings: Settings, database_url: str, number: int, ready: Callable[[], None]
) -> None:
    """A worker process: serve HTTP until SIGTERM or SIGINT."""
    stop_logging = configure_logging(settings.log_level, settings.log_format, threaded=True)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_http(settings, database_url, ready))
    except Exception:
        log.exception("worker %d failed", number)
        sys.exit(1)
    finally:
        stop_logging()


async def serve_http(settings: Settings, database_url: str, ready: Callable[[], None]) -> None:
    """Open the core and the periodic maintenance, then serve until told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(IO_THREADS, "casd-io"))
    async with open_core(settings, database_url) as core, periodic_maintenance(core):
        await serve_app(core, stop, ready)


async def serve_app(
    core: Core,
    stop: asyncio.Event,
    ready: Callable[[], None],
    shutdown_timeout: float = SHUTDOWN_SECONDS,
) -> None:
    """Bind the port (shared by all workers), serve until ``stop``, then let requests in
    flight finish (up to ``shutdown_timeout``)."""
    app = create_app(core)
    # The core is this process's: as the server stops, the resumable uploads still writing
    # end and record the bytes they received rather than wait out the shutdown timeout.
    app.on_shutdown.insert(0, lambda _: end_upload_writers(core))
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("casd.access"),
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        host, port = core.settings.host_port
        await web.TCPSite(runner, host, port, reuse_port=True).start()
        ready()
        await stop.wait()
    finally:
        await runner.cleanup()


async def end_upload_writers(core: Core) -> None:
    core.uploads.shutdown()
