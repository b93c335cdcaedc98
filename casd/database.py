"""PostgreSQL access: a pool, named queries, migrations, and driver errors made domain errors.

The rest of casd speaks only in query names (``await db.fetchrow("insert_blob", ...)``);
this is the one place where asyncpg exceptions are translated to :mod:`casd.errors`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from casd import sqlfiles
from casd.database_checks import check_database
from casd.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# A constant key for the session advisory lock that serialises migrations across processes.
MIGRATION_LOCK_KEY = 0x6361_7364_6D69_67  # "casdmig"

# Everything that means "the database is not answering" (down, restarting, refusing
# connections, connection lost mid-query), as opposed to an error in a statement.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,  # "database does not allow connections"
)


@contextlib.contextmanager
def _translated_errors() -> Any:
    try:
        yield
    except _CONNECTION_ERRORS as error:
        raise Unavailable(f"database unavailable: {type(error).__name__}") from error


class _Connection(asyncpg.Connection):
    """Skips asyncpg's reset query on release (a round trip each time) when only named queries
    ran since the connection was acquired: they leave no session state behind (their advisory
    locks are transaction-scoped). Whatever acquires the pool directly gets the full reset."""

    __slots__ = ("_named_only",)

    def mark_named_only(self) -> None:
        self._named_only = True

    def get_reset_query(self) -> str:
        named_only = getattr(self, "_named_only", False)
        self._named_only = False
        return "" if named_only else str(super().get_reset_query())


class Queries:
    """Named queries run on one connection (or on the pool)."""

    def __init__(self, executor: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy) -> None:
        self._executor = executor

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any) -> T:
        with _translated_errors():
            try:
                return await method(*args)
            except TimeoutError:
                self._abandon()
                raise Unavailable("the database did not answer in time") from None

    def _abandon(self) -> None:
        """Drop a connection whose statement timed out: the database may hang, and asyncpg
        would wait on it again to cancel the statement, roll back and reset the connection."""
        if isinstance(self._executor, asyncpg.Connection | PoolConnectionProxy):
            self._executor.terminate()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(self._executor.fetch, sqlfiles.queries()[query], *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._call(self._executor.fetchrow, sqlfiles.queries()[query], *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call(self._executor.fetchval, sqlfiles.queries()[query], *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._call(self._executor.execute, sqlfiles.queries()[query], *args)


class Database(Queries):
    """The connection pool of one casd process."""

    def __init__(self, pool: asyncpg.Pool, url: str | None = None, timeout: float = 60) -> None:
        super().__init__(pool)
        self.pool = pool
        self.url = url
        self.timeout = timeout

    @classmethod
    async def connect(cls, url: str, *, max_size: int = 20, wait_limit: float = 60) -> Database:
        """A pool whose every wait for the database (a connection, a statement) ends after
        ``wait_limit`` seconds with :class:`Unavailable`, so that a database that stops answering
        costs a request at most that long."""
        with _translated_errors():
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=max_size,
                init=_init_connection,
                timeout=wait_limit,
                command_timeout=wait_limit,
                connection_class=_Connection,
            )
        return cls(pool, url, wait_limit)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Queries]:
        # No timeout on acquiring (asyncpg would run every acquire through wait_for, which
        # costs the small uploads ~5%): connecting is bounded by the pool's own timeout, and
        # a connection in use comes back within one statement timeout, also from a hung
        # database (a timed-out connection is dropped at once, see Queries._abandon).
        async with self.pool.acquire() as connection:
            yield Queries(connection)
            cast(_Connection, connection).mark_named_only()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        with _translated_errors():
            async with self._connection() as queries:
                return await queries.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        with _translated_errors():
            async with self._connection() as queries:
                return await queries.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        with _translated_errors():
            async with self._connection() as queries:
                return await queries.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        with _translated_errors():
            async with self._connection() as queries:
                return await queries.execute(query, *args)

    async def close(self) -> None:
        await self.pool.close()

    async def connect_dedicated(self) -> asyncpg.Connection:
        """A connection outside the pool, for LISTEN and session locks held for long."""
        with _translated_errors():
            connection = await asyncpg.connect(self.url, timeout=self.timeout)
        await _init_connection(connection)
        return connection

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        """Run named queries in one transaction on one connection."""
        with _translated_errors():
            async with self.pool.acquire() as connection:
                async with connection.transaction():
                    yield Queries(connection)
                cast(_Connection, connection).mark_named_only()

    async def ping(self) -> None:
        await self.fetchval("ping")


class Listener:
    """A connection of its own that hears the notifications of one channel."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self._closing = False

    @classmethod
    async def open(
        cls, url: str, channel: str, on_notify: Callable[[], None], on_lost: Callable[[], None]
    ) -> Listener:
        """Call ``on_notify()`` for each notification on ``channel``, ``on_lost()`` if the
        connection ends before :meth:`close`."""
        with _translated_errors():
            listener = cls(await asyncpg.connect(url))
        try:
            with _translated_errors():
                await listener.connection.add_listener(channel, lambda *_: on_notify())
        except BaseException:
            await listener.close()
            raise

        def ended(_: object) -> None:
            if not listener._closing:
                on_lost()

        listener.connection.add_termination_listener(ended)
        return listener

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await self.connection.close()


async def _init_connection(connection: asyncpg.Connection) -> None:
    # JSON in, JSON out: metadata columns are jsonb and appear as Python dicts.
    import json

    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def migrate(url: str) -> list[int]:
    """Apply the migrations that are not yet recorded; return the versions applied.

    A session advisory lock on a dedicated connection keeps two servers that start at once
    from migrating concurrently: the second waits, then finds nothing left to do. Every start
    and every command that writes comes here first, so the database is checked here: a
    standby, a read-only database or a pooler in transaction mode is refused
    (:mod:`casd.database_checks`).
    """
    with _translated_errors():
        connection = await asyncpg.connect(url)
    try:
        with _translated_errors():
            await check_database(connection, url)
        named = sqlfiles.queries()
        await connection.execute(named["lock_migrations"], MIGRATION_LOCK_KEY)
        try:
            return await _apply_missing(connection)
        finally:
            await connection.execute(named["unlock_migrations"], MIGRATION_LOCK_KEY)
    finally:
        await connection.close()


async def _apply_missing(connection: asyncpg.Connection) -> list[int]:
    named = sqlfiles.queries()
    await connection.execute(named["create_migrations_table"])
    done = {row["version"] for row in await connection.fetch(named["applied_migrations"])}
    applied = []
    for migration in sqlfiles.migrations():
        if migration.version in done:
            continue
        log.info("applying migration %04d_%s", migration.version, migration.name)
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(named["record_migration"], migration.version, migration.name)
        applied.append(migration.version)
    return applied
