"""Pure functions: settings parsing, byte ranges, digests, SQL files."""

from __future__ import annotations

from pathlib import Path

import pytest

from casd.config import load_settings, parse_duration, parse_listen, parse_size
from casd.digests import blob_relpath, lock_key, parse_digest
from casd.errors import InvalidDigest, RangeNotSatisfiable
from casd.http.ranges import parse_range
from casd.sqlfiles import migrations, parse_queries, queries


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("30s", 30), ("15m", 900), ("24h", 86400), ("1h30m", 5400), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "-5s", "1h 2", "90", "1h30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("64k", 65536),
        ("10MiB", 10 << 20),
        ("10GB", 10**10),
        ("10gb", 10**10),
        ("10GiB", 10 * 2**30),
        ("512M", 512 << 20),
        ("3 kB", 3000),
        ("7B", 7),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "10XB", "10 GiBs", "1.5G", "-1", "G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8480") == ("127.0.0.1", 8480)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":8480") == ("0.0.0.0", 8480)
    for bad in ("localhost", "127.0.0.1:0", "127.0.0.1:65536", "::1:80", "a b:80", "h:8x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_settings_from_environment_and_overrides(tmp_path: Path) -> None:
    environ = {"CASD_DATA_DIR": str(tmp_path), "CASD_MAX_BLOB_SIZE": "2G", "CASD_PRIVATE": "yes"}
    settings = load_settings({"listen": "127.0.0.1:9999", "workers": None}, environ)
    assert settings.data_dir == tmp_path
    assert settings.max_blob_size == 2 << 30
    assert settings.private is True
    assert settings.listen == "127.0.0.1:9999"
    assert settings.workers == 1
    with pytest.raises(ValueError, match="CASD_UPLOAD_TTL"):
        load_settings({}, {"CASD_UPLOAD_TTL": "soon"})


def test_range_parsing() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-49", 100) == (0, 50)
    assert parse_range("bytes=50-", 100) == (50, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=90-200", 100) == (90, 100)
    assert parse_range("bytes=9-1", 100) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=100-", 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-5", 0)


def test_digests() -> None:
    digest = "blake3:" + "ab" * 32
    assert parse_digest(digest) == digest
    assert str(blob_relpath(digest)) == f"blake3/ab/{'ab' * 32}"
    assert -(2**63) <= lock_key(digest) < 2**63
    with pytest.raises(InvalidDigest):
        parse_digest("blake3:../../" + "a" * 58)


def test_sql_files() -> None:
    versions = [migration.version for migration in migrations()]
    # Numbers are reserved ahead for work in progress: gaps are fine, order and uniqueness not.
    assert versions == sorted(set(versions)) and versions[:4] == [1, 2, 3, 4]
    assert "lock_and_upsert_blob" in queries()
    assert parse_queries("-- name: one\nSELECT 1;\n-- name: two\nSELECT 2;") == {
        "one": "SELECT 1;",
        "two": "SELECT 2;",
    }
