"""Bearer tokens and the namespaces they may write.

A token's secret is shown once, at creation; the database keeps only its SHA-256. A write
prefix covers a name that equals it or continues it at a segment boundary; the empty prefix
covers every name.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from casd.database import Database, Listener, Queries
from casd.errors import CasdError, Forbidden, InvalidName, Unauthorized
from casd.names import validate_name

log = logging.getLogger(__name__)

SECRET_PREFIX = "casd_"
# A server trusts a token that authenticated again, without a query, for this long, and only
# while it listens for revocations: every revocation (by any process) empties the cache of every
# server, so it takes effect at once; the time limit only bounds a notification gone astray.
TOKEN_CACHE_SECONDS = 2.0
TOKEN_CACHE_SIZE = 1024
REVOCATIONS = "casd_token_revoked"  # the notification channel revoke_token speaks on
REWATCH_SECONDS = 5.0


@dataclass(frozen=True)
class Token:
    id: int
    label: str
    write_prefixes: tuple[str, ...]
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def actor(self) -> str:
        """How history and logs name whoever used this token."""
        return f"token:{self.id}" + (f" ({self.label})" if self.label else "")

    def may_write(self, name: str) -> bool:
        return any(prefix_covers(prefix, name) for prefix in self.write_prefixes)

    @property
    def is_admin(self) -> bool:
        """The empty prefix covers every name: such a token is the administrator's."""
        return "" in self.write_prefixes

    @property
    def may_upload(self) -> bool:
        # Content addressing cannot overwrite anything: any write prefix allows uploads.
        return bool(self.write_prefixes)


def normalize_prefix(prefix: str) -> str:
    return prefix.strip("/")


def valid_prefix(prefix: str) -> str:
    """A write prefix as stored: '' (every name) or a valid name, without surrounding slashes."""
    normalized = normalize_prefix(prefix)
    if normalized:
        return validate_name(normalized)
    if prefix:
        raise InvalidName(f"{prefix!r} would cover every name; give '' for that on purpose")
    return normalized


def prefix_covers(prefix: str, name: str) -> bool:
    prefix = normalize_prefix(prefix)
    return prefix == "" or name == prefix or name.startswith(prefix + "/")


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _token_from_row(row: Any) -> Token:
    return Token(
        row["id"], row["label"], tuple(row["write_prefixes"]), row["created_at"], row["revoked_at"]
    )


class TokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._recent: dict[bytes, tuple[float, Token]] = {}
        self._generation = 0  # grows with every revocation heard of
        self._listener: Listener | None = None
        self._database_url: str | None = None
        self._rewatch_at = 0.0

    async def watch_revocations(self, database_url: str) -> None:
        """Listen for revocations on a connection of its own; authenticated tokens are cached
        only while it listens (servers call this, one-shot commands need not)."""
        self._database_url = database_url
        self._rewatch_at = time.monotonic() + REWATCH_SECONDS
        try:
            self._listener = await Listener.open(
                database_url, REVOCATIONS, self._forget, self._lost
            )
        except CasdError as error:
            log.warning("tokens: not caching, cannot listen for revocations: %s", error.detail)

    async def close(self) -> None:
        listener, self._listener, self._database_url = self._listener, None, None
        if listener is not None:
            await listener.close()

    def _forget(self) -> None:
        self._generation += 1
        self._recent.clear()

    def _lost(self) -> None:
        log.warning("tokens: lost the revocations listener; not caching until it is back")
        self._listener = None
        self._forget()

    def _cached(self, digest: bytes) -> Token | None:
        if self._listener is None:
            if self._database_url and time.monotonic() > self._rewatch_at:
                self._rewatch_at = time.monotonic() + REWATCH_SECONDS
                asyncio.get_running_loop().create_task(self.watch_revocations(self._database_url))
            return None
        recent = self._recent.get(digest)
        if recent is None or time.monotonic() > recent[0]:
            return None
        return recent[1]

    def _remember(self, digest: bytes, token: Token, generation: int) -> None:
        # A revocation heard while the query ran may concern this token: do not keep it.
        if self._listener is None or generation != self._generation:
            return
        if len(self._recent) >= TOKEN_CACHE_SIZE:
            self._recent.clear()  # bounded; refilled by the next requests
        self._recent[digest] = (time.monotonic() + TOKEN_CACHE_SECONDS, token)

    async def create(
        self, write_prefixes: Sequence[str], label: str = "", queries: Queries | None = None
    ) -> tuple[Token, str]:
        """A new token and its secret (the only time the secret exists outside the client)."""
        secret = new_secret()
        prefixes = [valid_prefix(prefix) for prefix in write_prefixes]
        row = await (queries or self.db).fetchrow(
            "insert_token", label, hash_secret(secret), prefixes
        )
        return _token_from_row(row), secret

    async def authenticate(self, secret: str) -> Token:
        digest = hash_secret(secret)
        cached = self._cached(digest)
        if cached is not None:
            return cached
        generation = self._generation
        row = await self.db.fetchrow("token_by_hash", digest)
        if row is None or not hmac.compare_digest(row["secret_hash"], digest):
            raise Unauthorized("the bearer token is unknown or revoked")
        token = _token_from_row(row)
        self._remember(digest, token, generation)
        return token

    async def list(self) -> list[Token]:
        return [_token_from_row(row) for row in await self.db.fetch("list_tokens")]

    async def revoke(self, token_id: int) -> bool:
        return await self.db.fetchval("revoke_token", token_id) is not None

    async def create_admin_if_first(self) -> str | None:
        """On an empty database, create the admin token (empty prefix) and return its secret."""
        async with self.db.transaction() as tx:
            await tx.execute("lock_admin_bootstrap")
            if await tx.fetchval("count_tokens"):
                return None
            _, secret = await self.create([""], label="admin", queries=tx)
            return secret


def parse_bearer(header: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer`` header; None when there is no header."""
    if header is None:
        return None
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret or " " in secret:
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    return secret


def require_write(token: Token | None, name: str) -> Token:
    if token is None:
        raise Unauthorized("writing a name needs a bearer token")
    if not token.may_write(name):
        raise Forbidden(f"this token may not write {name!r}")
    return token


def require_upload(token: Token | None) -> Token:
    if token is None:
        raise Unauthorized("uploading blobs needs a bearer token")
    if not token.may_upload:
        raise Forbidden("this token has no write prefix, so it may not upload")
    return token
