"""One request to a casd server and its typed error, and trying again: what the calls of
:class:`casd.client.Client` are made of."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from casd.client.errors import TRANSPORT_ERRORS, TlsFailure, raise_for_problem, unreachable
from casd.client.retry import Retry, RetryNote, retry_after
from casd.errors import BlobNotFound, CasdError, Unavailable

T = TypeVar("T")


class Transport:
    """The server, the token, the HTTP session and how to retry."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        on_retry: RetryNote | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retry = retry or Retry()
        self.timeout = timeout
        self.on_retry = on_retry
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No overall limit: a 2.5 GB upload over a slow link takes hours.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout or 30, sock_read=self.timeout or 300
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return headers | (extra or {})

    def endpoint(self, path: str) -> URL:
        # encoded=True: names are sent as given (a name like 'a/../b' is the server's to refuse).
        return URL(self.url + path, encoded=True)

    def name_endpoint(self, prefix: str, name: str) -> URL:
        return self.endpoint(prefix + quote(name, safe="/"))

    async def request_json(
        self,
        method: str,
        url: URL,
        *,
        ok: tuple[int, ...] = (200,),
        not_found: type[CasdError] = BlobNotFound,
        **kwargs: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request; its status, JSON body and headers, or the typed error."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        try:
            async with self.session.request(method, url, **kwargs) as response:
                if response.status not in ok:
                    await raise_for_problem(response, not_found)
                body = await response.json(content_type=None) if response.status != 204 else None
                return response.status, body, dict(response.headers)
        except TRANSPORT_ERRORS as error:
            raise unreachable(self.url, error) from error

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` again with backoff while the server is unreachable or unavailable."""
        failures = 0
        while True:
            try:
                return await attempt()
            except Unavailable as error:
                failures += 1
                await self.backoff(failures, error)

    async def backoff(self, failures: int, error: CasdError, giving_up: str = "") -> None:
        """Wait before try ``failures + 1``; raise when the tries are used up or ``error``
        cannot go away by trying again (TLS). ``giving_up`` prefixes the final message."""
        if isinstance(error, TlsFailure):
            raise error
        if failures >= self.retry.attempts:
            if not giving_up:
                raise error
            raise Unavailable(
                f"{giving_up}: gave up after {failures} tries: {error.detail}"
            ) from error
        delay = retry_after(error)
        if delay is None:  # Retry-After: 0 means at once, not "back off as usual"
            delay = self.retry.delay(failures)
        if self.on_retry is not None:
            self.on_retry(failures, self.retry.attempts, delay, error)
        await asyncio.sleep(delay)
