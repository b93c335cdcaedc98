"""Where the SQL lives: numbered migrations in ``casd/sql/`` and named queries in
``casd/sql/queries/``, read as package resources (the same from a checkout and from a wheel).

``casd/sql/schema.sql`` is the schema that all migrations together produce (a test checks it).
Query files hold blocks that start with ``-- name: <query_name>``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_QUERY_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def sql_root() -> Traversable:
    return resources.files("casd") / "sql"


@functools.cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for entry in sql_root().iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    # Numbers are reserved ahead for work in progress, so gaps are fine; duplicates are not.
    if len(set(versions)) != len(versions) or (versions and versions[0] < 1):
        raise RuntimeError(f"migrations must have distinct positive numbers, found {versions}")
    return tuple(found)


def parse_queries(text: str) -> dict[str, str]:
    parts = _QUERY_HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@functools.cache
def queries() -> dict[str, str]:
    """Every named query, from all files in ``casd/sql/queries``."""
    named: dict[str, str] = {}
    for entry in sorted((sql_root() / "queries").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse_queries(entry.read_text()).items():
                if name in named:
                    raise RuntimeError(f"query {name!r} is defined twice")
                named[name] = sql
    return named
