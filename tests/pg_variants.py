"""PostgreSQL set-ups for the database checks: a hot standby (made with ``pg_basebackup -R`` from
the embedded binaries) and PgBouncer in front of the test cluster (Debian's ``pgbouncer``;
``make test`` installs it as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from casd.embedded import SYSTEM_USER, EmbeddedPostgres
from tests.conftest import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def socket_dir_of(url: str) -> str:
    """The Unix socket directory of an embedded cluster's URL (``?host=DIR``)."""
    return parse_qs(urlsplit(url).query)["host"][0]


class Standby(EmbeddedPostgres):
    """A hot standby of an embedded cluster: its data directory is a base backup of the primary
    (``-R`` writes the replication settings), started like any embedded cluster."""

    def __init__(self, pgdata: Path, primary_url: str) -> None:
        super().__init__(pgdata)
        self.primary_socket_dir = socket_dir_of(primary_url)

    def _initdb(self) -> None:
        args = ["-h", self.primary_socket_dir, "-U", "postgres", "-D", str(self.pgdata)]
        self._run("pg_basebackup", [*args, "-R", "-X", "stream", "-c", "fast"])


def embedded_or_skip() -> None:
    if os.environ.get("CASD_TEST_DATABASE_URL"):
        pytest.skip("needs the embedded test cluster (CASD_TEST_DATABASE_URL is set)")


def primary_and_standby(directory: Path) -> Iterator[tuple[str, str]]:
    """The URLs of a fresh embedded cluster and of a hot standby of it, for as long as the
    generator runs. A cluster of their own: a base backup of the session's cluster would copy
    every test database made so far."""
    embedded_or_skip()
    with (
        EmbeddedPostgres(directory / "primary" / "postgres") as primary,
        Standby(directory / "standby" / "postgres", primary.url) as standby,
    ):
        yield primary.url, standby.url


def pgbouncer(server_url: str, directory: Path, mode: str = "transaction") -> Iterator[str]:
    """PgBouncer in ``mode`` (``pool_mode``) in front of the embedded cluster of ``server_url``;
    yields a URL template with ``{database}`` for the database name."""
    embedded_or_skip()
    if not Path(PGBOUNCER).exists():
        pytest.skip("pgbouncer is not installed (make test installs it as root)")
    port = free_port()
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={socket_dir_of(server_url)} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\n"
        f"pool_mode = {mode}\ndefault_pool_size = 2\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    config.chmod(0o644)
    user = ["-u", SYSTEM_USER] if os.geteuid() == 0 else []  # it refuses to run as root
    with (directory / "pgbouncer.log").open("wb") as log:
        process = subprocess.Popen([PGBOUNCER, *user, str(config)], stdout=log, stderr=log)
    try:
        _wait_for_port(port, process)
        yield f"postgresql://postgres@127.0.0.1:{port}/{{database}}"
    finally:
        process.terminate()
        process.wait(10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("pgbouncer did not listen")
