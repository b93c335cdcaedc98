"""Bearer tokens: the namespaces they may write and read, their rights, expiry and budget.

A token's secret is shown once, at creation; the database keeps only its SHA-256. A write
prefix covers a name that equals it or continues it at a segment boundary; the empty prefix
covers every name. An admin token may do everything; a token with the ``mint`` right may create
tokens that can do no more than itself (prefixes within its own, expiry no later, budget no
larger); revoking a token revokes what it minted.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from casd import wire
from casd.blobs import Charge
from casd.database import Database, Listener, Queries
from casd.errors import CasdError, Forbidden, InvalidName, TokenNotFound, Unauthorized
from casd.names import iso_utc, validate_name
from casd.wire import prefix_covers as prefix_covers  # the contract's rule, the client's too

log = logging.getLogger(__name__)

SECRET_PREFIX = "casd_"
# A server trusts a token that authenticated again, without a query, for this long, and only
# while it listens for revocations: every revocation (by any process) empties the cache of every
# server, so it takes effect at once; the time limit only bounds a notification gone astray.
TOKEN_CACHE_SECONDS = 2.0
TOKEN_CACHE_SIZE = 1024
REVOCATIONS = "casd_token_revoked"  # the notification channel revoke_token speaks on
REWATCH_SECONDS = 5.0
NOTIFICATION_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Token:
    id: int
    label: str
    write_prefixes: tuple[str, ...]
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    read_prefixes: tuple[str, ...] | None = None  # None: reads every name
    mint: bool = False
    expires_at: datetime | None = None
    quota_bytes: int | None = None
    used_bytes: int = 0
    minted_by: int | None = None

    @property
    def actor(self) -> str:
        """How history and logs name whoever used this token."""
        return f"token:{self.id}" + (f" ({self.label})" if self.label else "")

    def may_write(self, name: str) -> bool:
        return any(prefix_covers(prefix, name) for prefix in self.write_prefixes)

    @property
    def read_scope(self) -> tuple[str, ...] | None:
        """The prefixes this token may read on a private server; None: every name."""
        if self.is_admin or self.read_prefixes is None:
            return None
        return self.read_prefixes + self.write_prefixes

    @property
    def is_admin(self) -> bool:
        """The empty prefix covers every name: such a token is the administrator's."""
        return "" in self.write_prefixes

    @property
    def may_upload(self) -> bool:
        # Content addressing cannot overwrite anything: any write prefix allows uploads.
        return bool(self.write_prefixes)

    @property
    def rights(self) -> list[str]:
        held = (("admin", self.is_admin), ("mint", self.mint or self.is_admin))
        return [right for right, has in held if has]

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def as_dict(self) -> dict[str, Any]:
        """The token as the API shows it: never its secret."""
        return wire.TokenInfo.of(self, admin=self.is_admin).to_json()


@dataclass(frozen=True)
class TokenSpec:
    """What a new token may do, as asked for by whoever creates it."""

    write_prefixes: tuple[str, ...] = ()
    label: str = ""
    read_prefixes: tuple[str, ...] | None = None
    mint: bool = False
    expires_in: float | None = None  # seconds from now
    quota_bytes: int | None = None

    def validated(self) -> TokenSpec:
        read = self.read_prefixes
        return replace(
            self,
            write_prefixes=tuple(valid_prefix(prefix) for prefix in self.write_prefixes),
            read_prefixes=None if read is None else tuple(valid_prefix(p) for p in read),
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def minted_spec(minter: Token, spec: TokenSpec) -> tuple[TokenSpec, datetime | None]:
    """The token ``minter`` may create for ``spec`` (what it leaves out is inherited), with its
    expiry; :class:`Forbidden` when it asks for more than the minter has."""
    expires_at = (
        None if spec.expires_in is None else datetime.now(UTC) + timedelta(seconds=spec.expires_in)
    )
    if minter.is_admin:
        return spec, expires_at
    if not minter.mint:
        raise Forbidden("this token may not mint tokens (it lacks the 'mint' right)")
    for prefix in spec.write_prefixes:
        if not any(prefix_covers(outer, prefix) for outer in minter.write_prefixes):
            raise Forbidden(f"write prefix {prefix!r} lies outside this token's own")
    scope, read = minter.read_scope, spec.read_prefixes
    if read is None:
        read = minter.read_prefixes  # a restricted minter's children read no more than it
    elif scope is not None:
        for prefix in read:
            if not any(prefix_covers(outer, prefix) for outer in scope):
                raise Forbidden(f"read prefix {prefix!r} lies outside what this token may read")
    if minter.expires_at is not None:
        if expires_at is not None and expires_at > minter.expires_at:
            raise Forbidden(
                f"the token would outlive this one (it expires at {_iso(minter.expires_at)})"
            )
        expires_at = expires_at or minter.expires_at
    quota = spec.quota_bytes
    if minter.quota_bytes is not None:
        if quota is not None and quota > minter.quota_bytes:
            raise Forbidden(f"a quota above this token's own ({minter.quota_bytes} bytes)")
        quota = minter.quota_bytes if quota is None else quota
    return replace(spec, read_prefixes=read, quota_bytes=quota), expires_at


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


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _token_from_row(row: Any) -> Token:
    read = row["read_prefixes"]
    return Token(
        row["id"],
        row["label"],
        tuple(row["write_prefixes"]),
        row["created_at"],
        row["revoked_at"],
        read_prefixes=None if read is None else tuple(read),
        mint=row["mint"],
        expires_at=row["expires_at"],
        quota_bytes=row["quota_bytes"],
        used_bytes=row["used_bytes"],
        minted_by=row["minted_by"],
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
        self,
        write_prefixes: Sequence[str],
        label: str = "",
        queries: Queries | None = None,
        *,
        spec: TokenSpec | None = None,
        expires_at: datetime | None = None,
        minted_by: int | None = None,
    ) -> tuple[Token, str]:
        """A new token and its secret (the only time the secret exists outside the client).
        ``spec`` (when given) says everything but ``expires_at`` and ``minted_by``."""
        spec = (spec or TokenSpec(tuple(write_prefixes), label)).validated()
        if expires_at is None and spec.expires_in is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=spec.expires_in)
        secret = new_secret()
        row = await (queries or self.db).fetchrow(
            "insert_token",
            spec.label,
            hash_secret(secret),
            list(spec.write_prefixes),
            None if spec.read_prefixes is None else list(spec.read_prefixes),
            spec.mint,
            expires_at,
            spec.quota_bytes,
            minted_by,
        )
        return _token_from_row(row), secret

    async def mint(self, minter: Token, spec: TokenSpec) -> tuple[Token, str]:
        """A token created by ``minter`` over HTTP, within what ``minter`` may do itself."""
        allowed, expires_at = minted_spec(minter, spec.validated())
        return await self.create((), spec=allowed, expires_at=expires_at, minted_by=minter.id)

    async def authenticate(self, secret: str) -> Token:
        digest = hash_secret(secret)
        token = self._cached(digest)
        if token is None:
            generation = self._generation
            row = await self.db.fetchrow("token_by_hash", digest)
            if row is None or not hmac.compare_digest(row["secret_hash"], digest):
                raise Unauthorized("the bearer token is unknown or revoked")
            token = _token_from_row(row)
            self._remember(digest, token, generation)
        if token.expired():
            raise Unauthorized(f"the bearer token expired at {_iso(token.expires_at)}")
        return token

    async def charge_for(self, token: Token) -> Charge:
        """The budget an upload by ``token`` draws on, as it is now."""
        if token.quota_bytes is None:
            return Charge(token.id)
        used: int = await self.db.fetchval("token_used_bytes", token.id) or 0
        return Charge(token.id, limited=True, remaining=max(0, token.quota_bytes - used))

    async def fresh(self, token: Token) -> Token:
        """The token as stored now (its usage changes with every upload)."""
        row = await self.db.fetchrow("token_by_id", token.id)
        if row is None:
            raise TokenNotFound(f"no token {token.id}")
        return _token_from_row(row)

    async def visible_to(self, caller: Token) -> builtins.list[Token]:
        """What ``caller`` may list: every token for an admin, else itself and what it minted."""
        if caller.is_admin:
            return await self.list()
        rows = await self.db.fetch("token_descendants", caller.id)
        return [await self.fresh(caller), *(_token_from_row(row) for row in rows)]

    async def revoke_as(self, caller: Token, token_id: int) -> builtins.list[int]:
        """Revoke ``token_id`` (and what was minted under it) if ``caller`` may: an admin any
        token, others themselves and what they minted. The ids revoked."""
        if not caller.is_admin and token_id != caller.id:
            minted = {row["id"] for row in await self.db.fetch("token_descendants", caller.id)}
            if token_id not in minted:
                raise TokenNotFound(f"no token {token_id} that this token may revoke")
        revoked = await self.revoke_all(token_id)
        if token_id not in revoked:
            raise TokenNotFound(f"token {token_id} does not exist or is revoked already")
        return revoked

    async def list(self) -> list[Token]:
        return [_token_from_row(row) for row in await self.db.fetch("list_tokens")]

    async def revoke(self, token_id: int) -> bool:
        return token_id in await self.revoke_all(token_id)

    async def revoke_all(self, token_id: int) -> builtins.list[int]:
        """Revoke a token and every token minted under it; the ids revoked. A server returns
        once it has heard its own notification: this process trusts none of them any more, and
        PostgreSQL has sent the notification to every other listening server."""
        generation = self._generation
        revoked = [row["id"] for row in await self.db.fetch("revoke_token", token_id)]
        deadline = time.monotonic() + NOTIFICATION_WAIT_SECONDS
        while revoked and self._listener is not None and self._generation == generation:
            if time.monotonic() > deadline:
                self._forget()  # a notification gone astray: forget everything anyway
                break
            await asyncio.sleep(0.002)
        return revoked

    async def create_admin_if_first(self) -> str | None:
        """On an empty database, create the admin token (empty prefix) and return its secret."""
        async with self.db.transaction() as tx:
            await tx.execute("lock_admin_bootstrap")
            if await tx.fetchval("count_tokens"):
                return None
            spec = TokenSpec(("",), "admin")
            _, secret = await self.create((), queries=tx, spec=spec)
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


def require_admin(token: Token | None, what: str) -> Token:
    if token is None:
        raise Unauthorized(f"{what} needs a bearer token")
    if not token.is_admin:
        raise Forbidden(f"{what} needs an admin token")
    return token


def require_token(token: Token | None, what: str) -> Token:
    if token is None:
        raise Unauthorized(f"{what} needs a bearer token")
    return token


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
