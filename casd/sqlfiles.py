"""Where the SQL lives: numbered migrations in ``sql/`` and named queries in ``sql/queries/``.

In a wheel the top-level ``sql/`` folder ships as ``casd/sql``; from a source checkout it is
read in place. Query files hold blocks that start with ``-- name: <query_name>``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_QUERY_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def sql_root() -> Traversable:
    packaged = resources.files("casd") / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


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
    """Every named query, from all files in ``sql/queries``."""
    named: dict[str, str] = {}
    for entry in sorted((sql_root() / "queries").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse_queries(entry.read_text()).items():
                if name in named:
                    raise RuntimeError(f"query {name!r} is defined twice")
                named[name] = sql
    return named
