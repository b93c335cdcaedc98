"""What casd needs of the database URL, checked before anything is written.

casd coordinates its processes and nodes with PostgreSQL sessions: session advisory locks
(migrations, periodic maintenance, the liveness of upload writers) and LISTEN/NOTIFY (token
revocations, upload takeovers). A hot standby grants advisory locks without the primary and
refuses LISTEN; a pooler in transaction mode hands a client's statements to whichever server
process is free, so its session locks and LISTEN belong to nobody (see docs/API.md, "Several
nodes"). Both break casd's guarantees silently, so they are refused at start with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg

from casd import sqlfiles
from casd.errors import CasdError


class UnsuitableDatabase(CasdError):
    """The database cannot coordinate casd: it is read-only, or it does not keep sessions.
    (Never an HTTP answer: casd stops before it serves; hence not in casd.errors.)"""

    status, code, title = 503, "unsuitable-database", "Unsuitable database"


# How long a notification may take to come back over a direct connection (it takes
# milliseconds; a pooler in transaction mode never delivers it).
NOTIFICATION_TIMEOUT = 5.0
PROBE_CHANNEL_PREFIX = "casd_session_probe_"
NEEDS = (
    "point --database-url (CASD_DATABASE_URL) at the read-write primary, directly or through"
    " a pooler in session mode"
)
# What a pooler in transaction mode does to asyncpg's prepared statements.
_LOST_STATEMENTS = (
    asyncpg.exceptions.InvalidSQLStatementNameError,
    asyncpg.exceptions.DuplicatePreparedStatementError,
)


async def check_database(connection: asyncpg.Connection, url: str) -> None:
    """Raise :class:`UnsuitableDatabase` unless ``connection`` (opened on ``url``) reaches a
    writable primary and keeps a session of its own across statements."""
    try:
        await require_writable(connection)
        await require_own_session(connection, url)
    except _LOST_STATEMENTS as error:
        raise _pooled(f"a prepared statement vanished between statements ({error})") from None


async def require_writable(connection: asyncpg.Connection) -> None:
    role = await connection.fetchrow(_query("database_role"))
    assert role is not None
    if role["in_recovery"]:
        raise UnsuitableDatabase(f"the database is a read-only standby (in recovery): {NEEDS}")
    if role["read_only"]:
        raise UnsuitableDatabase(
            f"the database is read-only (default_transaction_read_only is on): {NEEDS}"
        )


async def require_own_session(connection: asyncpg.Connection, url: str) -> None:
    """A second connection pins a server process in an open transaction while this one asks
    which server process it talks to, then sends a notification this one listens for. Directly
    or through a session pooler, each connection keeps its own server process and hears the
    notification; through a transaction pooler the second connection gets this one's process, or
    this one moves, and the notification is lost with the session that LISTENed."""
    channel = PROBE_CHANNEL_PREFIX + secrets.token_hex(8)
    heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def hear(*_: object) -> None:
        if not heard.done():
            heard.set_result(None)

    own = await connection.fetchval(_query("backend_pid"))
    await connection.add_listener(channel, hear)
    try:
        async with _other_connection(url) as other, other.transaction():
            pinned = await other.fetchval(_query("backend_pid"))
            still_own = await connection.fetchval(_query("backend_pid"))
            await other.fetchval(_query("notify_probe"), channel, "probe")
        if pinned == own:
            raise _pooled("a second connection was served by this connection's server process")
        if still_own != own:
            raise _pooled("this connection moved to another server process between statements")
        try:
            await asyncio.wait_for(heard, NOTIFICATION_TIMEOUT)
        except TimeoutError:
            lost = f"a notification was not delivered within {NOTIFICATION_TIMEOUT:g}s"
            raise _pooled(lost) from None
    finally:
        await connection.remove_listener(channel, hear)


@contextlib.asynccontextmanager
async def _other_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    other = await asyncpg.connect(url)
    try:
        yield other
    finally:
        await other.close()


def _pooled(evidence: str) -> UnsuitableDatabase:
    return UnsuitableDatabase(
        "the database URL does not keep a session (a pooler in transaction mode?): "
        f"{evidence}; session locks and LISTEN would not work: {NEEDS}"
    )


def _query(name: str) -> str:
    return sqlfiles.queries()[name]
