"""Settings: one frozen dataclass, read from ``CASD_*`` environment variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8480"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"(\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in '90', '30s', '15m', '24h', '7d', '1h30m'."""
    compact = text.strip().lower()
    seconds, position = 0.0, 0
    for match in _DURATION.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(f"not a duration: {text!r} (try 30s, 15m, 24h, 7d)")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in '1048576', '64k', '10MiB', '2G' (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (try 512M, 10GiB)")
    unit = (match.group(2) or "b")[0].lower()
    multiplier: int = 1024 ** "bkmgt".index(unit)
    return int(match.group(1)) * multiplier


def parse_listen(text: str) -> tuple[str, int]:
    """('127.0.0.1', 8480) from '127.0.0.1:8480' or '[::1]:8480'."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "casd"


@dataclass(frozen=True)
class Settings:
    """Everything a casd process needs to know, fixed at start."""

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    listen: str = DEFAULT_LISTEN
    database_url: str | None = None
    workers: int = 1
    private: bool = False
    max_blob_size: int | None = None
    upload_ttl: float = 24 * 3600
    scrub_interval: float | None = None
    scrub_max_rate: float | None = None  # MB/s (10**6 bytes) read by the periodic scrub
    keep_versions: int = 10
    gc_grace: float = 24 * 3600
    verify_reads: bool = True
    db_pool_size: int = 20
    log_level: str = "INFO"

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"


def _env_flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


# CASD_<NAME> environment variable -> (Settings field, parser)
_ENV_FIELDS: dict[str, tuple[str, Any]] = {
    "CASD_DATA_DIR": ("data_dir", Path),
    "CASD_LISTEN": ("listen", str),
    "CASD_DATABASE_URL": ("database_url", str),
    "CASD_WORKERS": ("workers", int),
    "CASD_PRIVATE": ("private", _env_flag),
    "CASD_MAX_BLOB_SIZE": ("max_blob_size", parse_size),
    "CASD_UPLOAD_TTL": ("upload_ttl", parse_duration),
    "CASD_SCRUB_INTERVAL": ("scrub_interval", parse_duration),
    "CASD_SCRUB_MAX_RATE": ("scrub_max_rate", float),
    "CASD_KEEP_VERSIONS": ("keep_versions", int),
    "CASD_GC_GRACE": ("gc_grace", parse_duration),
    "CASD_VERIFY_READS": ("verify_reads", _env_flag),
    "CASD_DB_POOL_SIZE": ("db_pool_size", int),
    "CASD_LOG_LEVEL": ("log_level", str),
}


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then from explicit (CLI) overrides that are not None."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for variable, (field, parse) in _ENV_FIELDS.items():
        raw = environ.get(variable)
        if raw:
            try:
                values[field] = parse(raw)
            except ValueError as error:
                raise ValueError(f"{variable}: {error}") from error
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    settings = Settings(**values)
    parse_listen(settings.listen)  # fail early on a bad address
    if settings.workers < 1:
        raise ValueError("workers must be at least 1")
    return dataclasses.replace(settings, data_dir=settings.data_dir.expanduser().absolute())
