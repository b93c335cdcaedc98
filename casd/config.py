"""Settings: one frozen dataclass, read from ``CASD_*`` environment variables and CLI flags.

Every setting is described once, in ``SETTINGS``: its environment variable, its ``casd serve``
flag, how its text is parsed and what it means. The CLI builds its options from that table, and
a bad value of any setting is a one-line error that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8480"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)", re.IGNORECASE)
# Decimal units are powers of 1000 (10GB = 10^10 bytes), binary ones of 1024 (10GiB = 10 * 2^30);
# a lone letter (64k, 512M, 2G) is binary, as in nginx and systemd.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **{f"{prefix}b": 1000 ** (power + 1) for power, prefix in enumerate("kmgtp")},
    **{f"{prefix}ib": 1024 ** (power + 1) for power, prefix in enumerate("kmgtp")},
    **{prefix: 1024 ** (power + 1) for power, prefix in enumerate("kmgtp")},
}
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*")
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()-]+")
FILE_STORE = "file"
DEFAULT_S3_BUFFER = 512 * 1024**2
MIN_S3_BUFFER = 16 * 1024**2  # one upload part


class SettingError(ValueError):
    """A setting whose value cannot be used; the message names the setting."""


def parse_duration(text: str) -> float:
    """Seconds in '30s', '15m', '24h', '7d', '1h30m', '250ms'; a bare '0' is zero."""
    compact = text.strip().lower()
    if compact == "0":
        return 0.0
    seconds, position = 0.0, 0
    for match in _DURATION.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(f"not a duration: {text!r} (a number with a unit: 30s, 15m, 24h, 7d)")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in '1048576', '10GB' (10^10), '10GiB' (10 * 2^30), '64k' and '512M' (binary)."""
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (bytes, or with a unit: 500MB, 10GiB, 512M)")
    multiplier: int = _SIZE_UNITS[unit]
    return int(match.group(1)) * multiplier


def parse_listen(text: str) -> tuple[str, int]:
    """('127.0.0.1', 8480) from '127.0.0.1:8480' or '[::1]:8480'; ':8480' is every address."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT with a port from 1 to 65535: {text!r}")
    if not _HOST.fullmatch(host) or (":" in host and not host.startswith("[")):
        raise ValueError(f"not HOST:PORT (IPv6 addresses go in brackets): {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _listen(text: str) -> str:
    parse_listen(text)
    return text.strip()


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isascii() or not text.strip().isdigit():
            raise ValueError(f"not a whole number: {text!r}")
        if int(text) < minimum:
            raise ValueError(f"must be at least {minimum}: {text!r}")
        return int(text)

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number: {text!r}")
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not on or off: {text!r} (1/0, true/false, yes/no, on/off)")


def _choice(choices: tuple[str, ...], upper: bool) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in choices:
            raise ValueError(f"not one of {', '.join(choices)}: {text!r}")
        return value

    return parse


def _optional_duration(text: str) -> float | None:
    """A duration; 'off' (or 0) turns the thing off."""
    if text.strip().lower() in {"off", "never"}:
        return None
    return parse_duration(text) or None


@dataclass(frozen=True)
class S3Location:
    """Where the S3 store keeps its objects: ``s3://BUCKET[/PREFIX]``."""

    bucket: str
    prefix: str = ""  # "" or "some/path/": every key of the store starts with it

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_s3_location(text: str) -> S3Location:
    """``S3Location('casd', 'farm/')`` from 's3://casd/farm' (a trailing slash or none)."""
    rest = text.strip()
    if not rest.startswith("s3://"):
        raise ValueError(f"not s3://BUCKET[/PREFIX]: {text!r}")
    bucket, _, prefix = rest.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"not an S3 bucket name: {bucket!r} (3-63 lowercase letters, digits, dots, hyphens)"
        )
    segments = prefix.strip("/").split("/") if prefix.strip("/") else []
    if any(not _PREFIX_SEGMENT.fullmatch(s) or s in {".", ".."} for s in segments):
        raise ValueError(
            f"not a key prefix (letters, digits, !_.*'()- between slashes): {prefix!r}"
        )
    return S3Location(bucket, "".join(f"{segment}/" for segment in segments))


def _blob_store(text: str) -> str:
    """'file', or an ``s3://BUCKET[/PREFIX]`` URL (normalised)."""
    if text.strip().lower() == FILE_STORE:
        return FILE_STORE
    if not text.strip().startswith("s3://"):
        raise ValueError(f"not 'file' or s3://BUCKET[/PREFIX]: {text!r}")
    return parse_s3_location(text).url


def _s3_buffer(text: str) -> int:
    size = parse_size(text)
    if size < MIN_S3_BUFFER:
        raise ValueError(f"must be at least 16MiB (one upload part): {text!r}")
    return size


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("an empty path")
    return Path(text)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "casd"


@dataclass(frozen=True)
class Settings:
    """Everything a casd process needs to know, fixed at start."""

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    listen: str = DEFAULT_LISTEN
    blob_store: str = FILE_STORE  # or s3://BUCKET[/PREFIX]
    s3_buffer: int = DEFAULT_S3_BUFFER  # bytes of S3 parts in flight per worker, at most
    database_url: str | None = None
    workers: int = 1
    worker_restarts: int = 5
    private: bool = False
    max_blob_size: int | None = None
    upload_ttl: float = 24 * 3600
    scrub_interval: float | None = None
    scrub_max_rate: float | None = None  # MB/s (10**6 bytes) read by the periodic scrub
    keep_versions: int = 10
    retention_interval: float | None = 300.0  # how often serve applies retention; None: never
    gc_grace: float = 24 * 3600
    verify_reads: bool = True
    db_pool_size: int = 20
    body_timeout: float = 60.0  # a request body that sends nothing for this long ends (408)
    max_uploads_per_token: int = 64  # uploads in progress per token in one worker process
    db_timeout: float = 10.0  # a wait for PostgreSQL longer than this: 503 unavailable
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def s3_location(self) -> S3Location | None:
        """The bucket and prefix of an S3 blob store; None for the file store."""
        return None if self.blob_store == FILE_STORE else parse_s3_location(self.blob_store)

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

    @property
    def metrics_dir(self) -> Path:
        """This server's metric files (see ``metrics_dir_of``)."""
        _host, port = self.host_port
        return metrics_dir_of(self.data_dir, port)


def metrics_dir_of(data_dir: Path, port: int) -> Path:
    """The directory of a server's memory-mapped metric files: off the data disk, in memory
    (``/dev/shm``) where there is one, else in the temporary directory. A write to a mapped page
    of a full disk kills the process (SIGBUS), so a full data disk must never hold them.

    One directory per user, port and data directory: two servers on one host cannot share a
    port, and the name is the same at every start, so a start clears what a crash left."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK | os.X_OK)):
        base = Path(tempfile.gettempdir())
    where = hashlib.sha256(os.fsencode(data_dir.absolute())).hexdigest()[:12]
    return base / f"casd-metrics-{os.getuid()}-{port}-{where}"


@dataclass(frozen=True)
class Setting:
    """One setting: its field, environment variable, ``casd serve`` flag, parser and help."""

    field: str
    env: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""
    switch: bool = False  # a boolean: --flag/--no-flag on the command line

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "CASD_DATA_DIR", _path, "Data directory [~/.local/share/casd].", "DIR"),
    Setting("listen", "CASD_LISTEN", _listen, f"HOST:PORT to serve on [{DEFAULT_LISTEN}].", "ADDR"),
    Setting(
        "database_url",
        "CASD_DATABASE_URL",
        str,
        "PostgreSQL URL [an embedded PostgreSQL in the data directory].",
        "URL",
    ),
    Setting(
        "blob_store",
        "CASD_BLOB_STORE",
        _blob_store,
        "Where blobs live: file (in the data directory) or s3://BUCKET[/PREFIX], endpoint and"
        " credentials from the AWS_* variables and profiles [file].",
        "STORE",
    ),
    Setting(
        "s3_buffer",
        "CASD_S3_BUFFER",
        _s3_buffer,
        "Bytes of S3 upload parts one worker holds in memory at most (256M, 1GiB) [512MiB].",
        "SIZE",
    ),
    Setting("workers", "CASD_WORKERS", _count(1), "Worker processes sharing the port [1].", "N"),
    Setting(
        "worker_restarts",
        "CASD_WORKER_RESTARTS",
        _count(0),
        "Failed restarts in a row of a worker before casd gives up and exits 1 [5].",
        "N",
    ),
    Setting("private", "CASD_PRIVATE", _flag, "Reads need a token too [off].", switch=True),
    Setting(
        "max_blob_size",
        "CASD_MAX_BLOB_SIZE",
        parse_size,
        "Largest blob accepted (512M, 10GiB, 10GB) [unlimited].",
        "SIZE",
    ),
    Setting(
        "upload_ttl",
        "CASD_UPLOAD_TTL",
        parse_duration,
        "Idle resumable uploads are removed after this [24h].",
        "DURATION",
    ),
    Setting(
        "scrub_interval",
        "CASD_SCRUB_INTERVAL",
        parse_duration,
        "Scrub blobs not verified for this long, this often [off].",
        "DURATION",
    ),
    Setting(
        "scrub_max_rate",
        "CASD_SCRUB_MAX_RATE",
        _rate,
        "MB/s (10^6 bytes) the periodic scrub reads at most [unlimited].",
        "MB/S",
    ),
    Setting(
        "keep_versions",
        "CASD_KEEP_VERSIONS",
        _count(0),
        "casd gc keeps the last N digests of every name's history [10].",
        "N",
    ),
    Setting(
        "retention_interval",
        "CASD_RETENTION_INTERVAL",
        _optional_duration,
        "Apply the retention policies this often; off: never [5m].",
        "DURATION",
    ),
    Setting(
        "gc_grace",
        "CASD_GC_GRACE",
        parse_duration,
        "casd gc keeps blobs uploaded within this [24h].",
        "DURATION",
    ),
    Setting(
        "verify_reads",
        "CASD_VERIFY_READS",
        _flag,
        "Full GETs hash what they send [on].",
        switch=True,
    ),
    Setting(
        "db_pool_size",
        "CASD_DB_POOL_SIZE",
        _count(1),
        "PostgreSQL connections per worker [20].",
        "N",
    ),
    Setting(
        "body_timeout",
        "CASD_BODY_TIMEOUT",
        parse_duration,
        "A request body that sends nothing for this long ends with 408 [60s].",
        "DURATION",
    ),
    Setting(
        "max_uploads_per_token",
        "CASD_MAX_UPLOADS_PER_TOKEN",
        _count(1),
        "Uploads one token may have in progress in each worker process; more get 429 [64].",
        "N",
    ),
    Setting(
        "db_timeout",
        "CASD_DB_TIMEOUT",
        parse_duration,
        "A wait for PostgreSQL (a connection, a statement) longer than this answers 503 [10s].",
        "DURATION",
    ),
    Setting(
        "log_level",
        "CASD_LOG_LEVEL",
        _choice(LOG_LEVELS, upper=True),
        "DEBUG, INFO, WARNING or ERROR [INFO].",
        "LEVEL",
    ),
    Setting(
        "log_format",
        "CASD_LOG_FORMAT",
        _choice(LOG_FORMATS, upper=False),
        "json (one object per line) or text (for terminals) [json].",
        "FORMAT",
    ),
)


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then from explicit (CLI) overrides that are not None.

    Overrides given as text are parsed like the environment. Raises ``SettingError`` naming
    the flag and the variable of the first bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw:
            values[setting.field] = _parsed(setting, raw)
    by_field = {setting.field: setting for setting in SETTINGS}
    for field, value in (overrides or {}).items():
        if value is None:
            continue
        known = by_field.get(field)
        if isinstance(value, str) and known is not None:
            value = _parsed(known, value)
        values[field] = value
    settings = Settings(**values)
    return dataclasses.replace(settings, data_dir=settings.data_dir.expanduser().absolute())


def _parsed(setting: Setting, raw: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as error:
        raise SettingError(f"bad {setting.flag} ({setting.env}): {error}") from error
