"""The v1 wire format, shared by the server and the client: what docs/API.md defines.

The problem+json codes with their status and title, the header names and media types of the
protocol, the digest format, and the JSON records the API returns. The server serialises its
records through these shapes (``Shape.of(record).to_json()``) and the client parses answers
with them (``Shape.from_json(body)``), so the two cannot drift apart. Parsing tolerates members
it does not know (a newer server) and optional members a server lacks (an older one).

Standard library only: the client imports it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Self

# --- problems (RFC 9457 application/problem+json with casd's ``code``) ---


class Problem(NamedTuple):
    status: int
    title: str


PROBLEMS: dict[str, Problem] = {
    "invalid-digest": Problem(400, "Invalid digest"),
    "digest-mismatch": Problem(400, "Digest mismatch"),
    "invalid-name": Problem(400, "Invalid name"),
    "invalid-request": Problem(400, "Invalid request"),
    "unauthorized": Problem(401, "Unauthorized"),
    "forbidden": Problem(403, "Forbidden"),
    "protected-name": Problem(403, "Protected name"),
    "immutable-name": Problem(403, "Immutable name"),
    "blob-not-found": Problem(404, "Blob not found"),
    "name-not-found": Problem(404, "Name not found"),
    "upload-not-found": Problem(404, "Upload not found"),
    "token-not-found": Problem(404, "Token not found"),
    "policy-not-found": Problem(404, "Policy not found"),
    "request-timeout": Problem(408, "Request Timeout"),
    "mismatching-upload-offset": Problem(409, "Mismatching upload offset"),
    "namespace-quota-exceeded": Problem(409, "Namespace quota exceeded"),
    "blob-quarantined": Problem(410, "Blob quarantined"),
    "precondition-failed": Problem(412, "Precondition failed"),
    "payload-too-large": Problem(413, "Payload too large"),
    "quota-exceeded": Problem(413, "Quota exceeded"),
    "unsupported-content-encoding": Problem(415, "Unsupported Media Type"),
    "unknown-blob": Problem(422, "Unknown blob"),
    "precondition-required": Problem(428, "Precondition required"),
    "too-many-uploads": Problem(429, "Too Many Requests"),
    "internal-error": Problem(500, "Internal Server Error"),
    "unavailable": Problem(503, "Service unavailable"),
    "insufficient-storage": Problem(507, "Insufficient storage"),
}
# The members every problem has; the others (``current``, ``checks``, ...) depend on the code.
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "code"})

# --- media types and headers ---

PROBLEM_JSON = "application/problem+json"
PARTIAL_UPLOAD = "application/partial-upload"  # the body of a PATCH to an upload

# IETF draft "Resumable Uploads for HTTP"; Upload-Complete is a structured boolean.
UPLOAD_OFFSET = "Upload-Offset"
UPLOAD_LENGTH = "Upload-Length"
UPLOAD_COMPLETE = "Upload-Complete"
TRUE, FALSE = "?1", "?0"
# The digest an upload must have, or the digest of the blob a name's content is.
CASD_DIGEST = "Casd-Digest"
CASD_NAME_VERSION = "Casd-Name-Version"
RETRY_AFTER = "Retry-After"

# --- digests ---

DIGEST_ALGORITHM = "blake3"
DIGEST_PREFIX = f"{DIGEST_ALGORITHM}:"
# BLAKE3-256 in lowercase hex: the only digest format of v1, spelled out only here.
DIGEST_HEX_LENGTH = 64
DIGEST_PATTERN = re.compile(rf"{re.escape(DIGEST_PREFIX)}[0-9a-f]{{{DIGEST_HEX_LENGTH}}}")
# What a message says a digest is.
DIGEST_FORMAT = f"'{DIGEST_PREFIX}' followed by {DIGEST_HEX_LENGTH} lowercase hex digits"


def is_digest(text: str) -> bool:
    return DIGEST_PATTERN.fullmatch(text) is not None


def prefix_covers(prefix: str, name: str) -> bool:
    """Whether a token's or a policy's prefix covers a name: the empty prefix covers every
    name, another the name it equals and those below it at a segment boundary."""
    prefix = prefix.strip("/")
    return prefix == "" or name == prefix or name.startswith(prefix + "/")


def version_etag(version: int) -> str:
    """A name's ``ETag`` (and what ``If-Match`` names): its version in quotes."""
    return f'"{version}"'


def iso_utc(moment: datetime) -> str:
    """How the API writes a moment: ``2024-05-01T12:00:00.123456Z``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- records ---


class WireError(ValueError):
    """An answer that is not the record it should be (a required member missing)."""


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, tuple | frozenset):
        return list(value)
    return value


class Shape:
    """A JSON record of the API as a frozen dataclass: members without a default are required,
    the others optional (an older server may lack them); unknown members are ignored."""

    @classmethod
    def from_json(cls, body: Any) -> Self:
        if not isinstance(body, Mapping):
            raise WireError(f"a {cls.__name__} is a JSON object, not {type(body).__name__}")
        members = dataclasses.fields(cls)  # type: ignore[arg-type]
        missing = [
            member.name
            for member in members
            if member.name not in body
            and member.default is dataclasses.MISSING
            and member.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise WireError(f"a {cls.__name__} needs {', '.join(missing)}")
        return cls(**{member.name: body[member.name] for member in members if member.name in body})

    @classmethod
    def of(cls, record: Any, **values: Any) -> Self:
        """The wire shape of a server-side record: each member from the attribute of that
        name (moments as ISO text, tuples as lists) unless given in ``values``."""
        for member in dataclasses.fields(cls):  # type: ignore[arg-type]
            if member.name not in values:
                values[member.name] = _json_value(getattr(record, member.name))
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            member.name: getattr(self, member.name)
            for member in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    # The name the client and the CLI have always used.
    def as_dict(self) -> dict[str, Any]:
        return self.to_json()


@dataclass(frozen=True)
class Blob(Shape):
    """A stored blob: the answer to ``PUT``/``POST /v1/blobs`` and a completed upload."""

    digest: str
    size: int


@dataclass(frozen=True)
class NameRecord(Shape):
    """What a name points at now (``GET /v1/names/{name}``)."""

    name: str
    digest: str
    size: int
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    healthy: bool = True  # False while the blob is quarantined or missing
    updated_at: str | None = None
    updated_by: str | None = None


@dataclass(frozen=True)
class HistoryEntry(Shape):
    """One change of a name (``GET /v1/history/{name}``), newest first."""

    version: int
    action: str  # create, update or delete
    digest: str | None = None
    previous_digest: str | None = None
    metadata: dict[str, Any] | None = None
    actor: str = ""
    at: str | None = None
    source: dict[str, Any] | None = None  # a promotion's {"name", "version"}


@dataclass(frozen=True)
class UploadSummary(Shape):
    """One of the caller's uploads in progress (``GET /v1/uploads``)."""

    id: str
    offset: int  # durable bytes; a request writing now may hold a few seconds more
    length: int | None = None  # Upload-Length, when given
    digest: str | None = None  # the Casd-Digest it was created with
    created_at: str | None = None
    age: float = 0.0  # seconds since it was created
    idle: float = 0.0  # seconds since its last request; it expires CASD_UPLOAD_TTL after


@dataclass(frozen=True)
class TokenInfo(Shape):
    """A token as the API shows it, never with its secret (``GET /v1/token``)."""

    id: int
    label: str = ""
    write_prefixes: list[str] = field(default_factory=list)
    read_prefixes: list[str] | None = None  # None: it reads every name
    admin: bool = False
    rights: list[str] = field(default_factory=list)
    expires_at: str | None = None
    quota_bytes: int | None = None
    used_bytes: int = 0
    minted_by: int | None = None
    created_at: str | None = None
    revoked_at: str | None = None


@dataclass(frozen=True)
class PolicyRecord(Shape):
    """The policy of a name prefix (``GET /v1/policies/{prefix}``)."""

    prefix: str
    protected: bool = False
    immutable: bool = False
    quota_bytes: int | None = None
    used_bytes: int | None = None
    delete_after: float | None = None  # seconds after a name's last change
    keep_versions: int | None = None
    updated_at: str | None = None
    updated_by: str | None = None
