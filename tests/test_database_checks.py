"""casd refuses, before writing anything, a database that cannot coordinate its processes and
nodes: a hot standby, a read-only database, a pooler in transaction mode (casd/database_checks.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from casd.database import migrate
from casd.database_checks import UnsuitableDatabase
from tests.conftest import create_database, free_port, with_database_name
from tests.pg_variants import pgbouncer, primary_and_standby


@pytest.fixture(scope="module")
def standby_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for _primary, standby in primary_and_standby(tmp_path_factory.mktemp("replicated")):
        yield standby


@pytest.fixture(scope="module")
def pooled_url(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database = urlsplit_path(create_database(postgres_url))
    for template in pgbouncer(postgres_url, tmp_path_factory.mktemp("pgbouncer")):
        yield template.format(database=database)


@pytest.fixture(scope="module")
def session_pooled_url(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    database = urlsplit_path(create_database(postgres_url))
    directory = tmp_path_factory.mktemp("pgbouncer-session")
    for template in pgbouncer(postgres_url, directory, mode="session"):
        yield template.format(database=database)


def urlsplit_path(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def schema_exists(url: str) -> bool:
    connection = await asyncpg.connect(url)
    try:
        return bool(
            await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        )
    finally:
        await connection.close()


async def test_a_direct_primary_is_accepted(postgres_url: str) -> None:
    url = create_database(postgres_url)
    assert await migrate(url)
    assert await schema_exists(url)


async def test_a_pooler_in_session_mode_is_accepted(session_pooled_url: str) -> None:
    assert await migrate(session_pooled_url)
    assert await schema_exists(session_pooled_url)


async def test_a_standby_is_refused(standby_url: str) -> None:
    with pytest.raises(UnsuitableDatabase, match="read-only standby"):
        await migrate(standby_url)


async def test_a_read_only_database_is_refused_and_left_unchanged(postgres_url: str) -> None:
    url = create_database(postgres_url)
    connection = await asyncpg.connect(postgres_url)
    try:
        name = urlsplit_path(url)
        await connection.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await connection.close()
    with pytest.raises(UnsuitableDatabase, match="default_transaction_read_only"):
        await migrate(url)
    assert not await schema_exists(url)


async def test_a_transaction_pooler_is_refused_and_nothing_written(
    pooled_url: str, postgres_url: str
) -> None:
    with pytest.raises(UnsuitableDatabase, match="does not keep a session"):
        await migrate(pooled_url)
    assert not await schema_exists(with_database_name(postgres_url, urlsplit_path(pooled_url)))


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["standby", "pooler"])
def test_serve_and_admin_commands_exit_with_one_line(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{kind}_url" if kind == "standby" else "pooled_url")
    base = [sys.executable, "-m", "casd"]
    data = ["--data-dir", str(tmp_path / "data"), "--database-url", url]
    token = subprocess.run(
        [*base, "token", "create", "--write", "x", *data],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert token.returncode == 1
    assert token.stderr.count("\n") == 1 and "unsuitable-database" in token.stderr, token.stderr
    serve = subprocess.run(
        [*base, "serve", *data, "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert serve.returncode == 1
    refusals = [line for line in serve.stderr.splitlines() if "unsuitable-database" in line]
    assert len(refusals) == 1, serve.stderr
