"""``casd serve``: database, migrations, first-start bootstrap, then one or more HTTP workers."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import socket
from collections.abc import Iterator

import uvloop
from aiohttp import web

from casd import redact
from casd.auth import TokenStore
from casd.blobstore import LocalBlobStore
from casd.config import Settings
from casd.database import Database, migrate
from casd.embedded import EmbeddedPostgres
from casd.http.accesslog import JsonAccessLogger
from casd.http.app import create_app

log = logging.getLogger(__name__)


LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr from a thread of its own: formatting, redacting and writing (to a slow
    terminal or a full pipe) never stall the event loop that logged."""
    output = logging.StreamHandler()
    output.setFormatter(logging.Formatter(LOG_FORMAT))
    redact.install([output])  # no token ever reaches the log, whoever logs it
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    atexit.register(listener.stop)  # writes what is still queued
    enqueue = logging.handlers.QueueHandler(records)
    # The queue carries the bare message (and traceback); the writer thread formats the line.
    enqueue.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[enqueue], force=True)


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
    store = LocalBlobStore(settings.blobs_dir, settings.staging_dir, settings.quarantine_dir)
    await store.cleanup_stale_staging()
    db = await Database.connect(database_url, max_size=2)
    try:
        secret = await TokenStore(db).create_admin_if_first()
    finally:
        await db.close()
    if secret is not None:
        write_admin_token(settings, secret)


def write_admin_token(settings: Settings, secret: str) -> None:
    path = settings.admin_token_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    path.chmod(0o600)
    log.info("created the admin token in %s", path)


def run_worker(settings: Settings, database_url: str) -> None:
    """Serve HTTP in this process until SIGINT or SIGTERM."""
    configure_logging(settings.log_level)
    host, port = settings.host_port
    web.run_app(
        create_app(settings, database_url),
        host=host,
        port=port,
        reuse_port=True,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("casd.access"),
        print=None,
        loop=uvloop.new_event_loop(),
    )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    check_port_free(settings)
    with database_url_for(settings) as database_url:
        asyncio.run(bootstrap(settings, database_url))
        log.info("casd serving on http://%s with %d worker(s)", settings.listen, settings.workers)
        if settings.workers == 1:
            run_worker(settings, database_url)
        else:
            run_worker_processes(settings, database_url)
    log.info("casd stopped")


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


def run_worker_processes(settings: Settings, database_url: str) -> None:
    """N processes share the port through SO_REUSEPORT and the one database."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=run_worker, args=(settings, database_url), name=f"casd-worker-{n}")
        for n in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
