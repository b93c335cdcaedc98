"""Request bodies as streams of chunks, ended when they stall."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader

from casd.errors import BodyStalled


class IdleWatch:
    """Ends a body (``BodyStalled`` on its stream) when a read of it waits ``idle`` seconds
    for a byte. Only waiting counts: time the server spends on what it received does not. One
    timer per request at most, alive only while a read waits."""

    def __init__(self, content: StreamReader, idle: float) -> None:
        self.content = content
        self.idle = idle
        self.loop = asyncio.get_running_loop()
        self.waiting = False
        self.since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """A read starts waiting."""
        self.waiting, self.since = True, self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self.since + self.idle, self._check)

    def end(self) -> None:
        self.waiting = False

    def close(self) -> None:
        """The body is read: no timer stays behind it (nor keeps its request alive)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self.waiting:
            return  # the next read arms it again
        due = self.since + self.idle
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check)
            return
        self.content.set_exception(
            BodyStalled(f"no byte of the body arrived for {self.idle:g} seconds")
        )


async def watched_chunks(content: StreamReader, idle: float) -> AsyncIterator[bytes]:
    """The body in the pieces that arrived, never joined (so never copied) here; a read that
    waits ``idle`` seconds for a byte raises :class:`BodyStalled`.

    ``readany()``, not ``iter_chunks()``: the latter never ends on aiohttp's shared empty
    payload and spins the worker forever on a second empty body (aio-libs/aiohttp#7616).
    """
    watch = IdleWatch(content, idle)
    try:
        while True:
            watch.begin()
            try:
                chunk = await content.readany()
            finally:
                watch.end()
            if not chunk:
                return
            yield chunk
    finally:
        watch.close()
