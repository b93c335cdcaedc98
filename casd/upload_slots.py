"""The per-process cap on the uploads one token may have in progress."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

from casd.errors import TooManyUploads


class UploadSlots:
    """How many uploads each token has in progress in this process, at most ``per_token``.

    The scope is one worker process, on purpose: what the cap protects (memory, file
    descriptors, the event loop) is the process's own. With N workers a token may have up to
    N times as many uploads in progress on one server.
    """

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._counts: collections.Counter[int] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, token_id: int) -> Iterator[None]:
        if self._counts[token_id] >= self.per_token:
            raise TooManyUploads(
                f"this token has {self.per_token} uploads in progress in this server process,"
                " as many as it may; retry when one has finished"
            )
        self._counts[token_id] += 1
        try:
            yield
        finally:
            self._counts[token_id] -= 1
            if not self._counts[token_id]:
                del self._counts[token_id]
