"""Single byte ranges (RFC 9110 section 14): parsing and satisfiability."""

from __future__ import annotations

import re

from casd.errors import RangeNotSatisfiable

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` with ``end`` exclusive, or None to send the whole blob.

    A header that is not one well-formed byte range is ignored, as RFC 9110 allows; a
    well-formed range that does not overlap the blob is refused with 416.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and int(last) < start:
        return None  # invalid syntax: ignore the header
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"the blob has {size} bytes", size=size)
