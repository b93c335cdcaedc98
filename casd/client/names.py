"""Names over HTTP: records, compare-and-swap writes, history, listings, the token's rights."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from casd import wire
from casd.client.records import HistoryEntry, NameRecord, TokenInfo, parsed
from casd.client.transport import Transport
from casd.errors import InvalidRequest, NameNotFound, PreconditionFailed


class NameCalls(Transport):
    """The name calls of :class:`casd.client.Client`."""

    async def resolve(self, name: str) -> NameRecord:
        """The record of a name."""
        _, body, _ = await self.retrying(
            lambda: self.request_json("GET", self.name_endpoint("/v1/names/", name))
        )
        return parsed(NameRecord, body)

    async def set_name(
        self,
        name: str,
        digest: str,
        *,
        version: int | None = None,
        create: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> NameRecord:
        """Point a name at a digest if it is still at ``version`` (or, with ``create``, if it
        does not exist): compare-and-swap. Else :class:`PreconditionFailed`, whose
        ``extra["current"]`` is the record as it is now."""
        headers = {"If-None-Match": "*"} if create else {}
        if version is not None:
            headers["If-Match"] = wire.version_etag(version)
        payload: dict[str, Any] = {"digest": digest}
        if metadata is not None:
            payload["metadata"] = metadata
        _, body, _ = await self.request_json(
            "PUT",
            self.name_endpoint("/v1/names/", name),
            json=payload,
            headers=headers,
            ok=(200, 201),
        )
        return parsed(NameRecord, body)

    async def update_name(
        self,
        name: str,
        change: Callable[[NameRecord | None], tuple[str, dict[str, Any] | None]],
        *,
        attempts: int = 20,
    ) -> NameRecord:
        """Read-modify-write: ``change(current)`` gives the new digest and metadata (None keeps
        the metadata); retried on ``412`` with the record the server reports as current."""
        current = await self.current(name)
        for _ in range(attempts):
            digest, metadata = change(current)
            try:
                if current is None:
                    return await self.set_name(name, digest, create=True, metadata=metadata)
                return await self.set_name(name, digest, version=current.version, metadata=metadata)
            except PreconditionFailed as error:
                found = error.extra.get("current")
                current = parsed(NameRecord, found) if found else None
        raise PreconditionFailed(f"{name} kept changing; gave up after {attempts} attempts")

    async def tag(
        self, name: str, digest: str, *, metadata: dict[str, Any] | None = None
    ) -> NameRecord:
        """Point a name at a digest, whatever it points at now (compare-and-swap, retried)."""
        return await self.update_name(name, lambda current: (digest, metadata))

    async def delete_name(self, name: str, *, version: int) -> None:
        await self.request_json(
            "DELETE",
            self.name_endpoint("/v1/names/", name),
            headers={"If-Match": wire.version_etag(version)},
            ok=(204,),
        )

    async def remove_name(self, name: str, *, version: int | None = None) -> int:
        """Delete a name at ``version`` (compare-and-swap), or whatever version it is at now
        (retried on ``412``); the version deleted."""
        if version is not None:
            await self.delete_name(name, version=version)
            return version
        for _ in range(20):
            current = await self.resolve(name)
            try:
                await self.delete_name(name, version=current.version)
                return current.version
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"{name} kept changing; gave up deleting it")

    async def rollback(self, name: str, *, to_version: int | None = None) -> NameRecord:
        """Point a name back at the digest (and metadata) of an earlier version: by default
        the newest one before the current whose digest differs. A compare-and-swap from the
        current version, recorded in the history like any change; :class:`PreconditionFailed`
        if the name changed meanwhile."""
        current = await self.resolve(name)
        earlier = await self._earlier(name, current, to_version)
        return await self.set_name(
            name, earlier.digest or "", version=current.version, metadata=earlier.metadata
        )

    async def _earlier(
        self, name: str, current: NameRecord, to_version: int | None
    ) -> HistoryEntry:
        if to_version is not None:
            entries = await self.history(name, limit=1, before=to_version + 1)
            if not entries or entries[0].version != to_version or entries[0].digest is None:
                raise NameNotFound(f"{name} has no version {to_version} to go back to")
            return entries[0]
        before: int | None = current.version
        while before is not None:
            entries = await self.history(name, limit=100, before=before)
            for entry in entries:
                if entry.digest is not None and entry.digest != current.digest:
                    return entry
            before = entries[-1].version if len(entries) == 100 else None
        raise NameNotFound(
            f"{name} never pointed at another digest before version {current.version}"
        )

    async def token_info(self) -> TokenInfo | None:
        """What the server says about our token (``GET /v1/token``): its ``write_prefixes``,
        ``admin`` and the rest; None from a server that cannot say."""
        try:
            _, body, _ = await self.retrying(
                lambda: self.request_json("GET", self.endpoint("/v1/token"))
            )
        except InvalidRequest as error:
            if error.status in (404, 405):
                return None
            raise
        return parsed(TokenInfo, body)

    async def _names_page(self, prefix: str, page: int, after: str | None) -> Any:
        params = {"prefix": prefix, "limit": str(page)} | ({"after": after} if after else {})
        _, body, _ = await self.request_json("GET", self.endpoint("/v1/names"), params=params)
        return body

    async def current(self, name: str) -> NameRecord | None:
        try:
            return await self.resolve(name)
        except NameNotFound:
            return None

    async def history(
        self, name: str, *, limit: int | None = None, before: int | None = None
    ) -> list[HistoryEntry]:
        """The changes of a name, newest first."""
        params = {"limit": str(limit)} if limit is not None else {}
        if before is not None:
            params["before"] = str(before)
        _, body, _ = await self.retrying(
            lambda: self.request_json(
                "GET", self.name_endpoint("/v1/history/", name), params=params
            )
        )
        return [parsed(HistoryEntry, entry) for entry in body["history"]]

    async def list_names(self, prefix: str = "", *, page: int = 100) -> AsyncIterator[NameRecord]:
        """Every name that starts with ``prefix``, in order, fetched a page at a time."""
        after: str | None = None
        while True:
            body = await self.retrying(functools.partial(self._names_page, prefix, page, after))
            for record in body["names"]:
                yield parsed(NameRecord, record)
            after = body.get("next")
            if not after:
                return
