"""How the client tries again: exponential backoff with jitter, and what ``Retry-After`` asks."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from casd.errors import CasdError

# ``note(failures, attempts, delay, error)`` is called before each retry.
RetryNote = Callable[[int, int, float, CasdError], None]
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with jitter: ``attempts`` tries in a row that make no progress."""

    attempts: int = 8
    first_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)


def retry_after(error: CasdError) -> float | None:
    """The seconds a ``Retry-After`` header asks for (capped), None without one."""
    return None if error.retry_after is None else min(float(error.retry_after), MAX_RETRY_AFTER)
