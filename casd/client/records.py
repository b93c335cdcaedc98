"""The records the client returns: those of the API (:mod:`casd.wire`) and the blob an upload
stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from casd import wire
from casd.client.errors import UnexpectedAnswer
from casd.wire import HistoryEntry, NameRecord, TokenInfo

__all__ = ["HistoryEntry", "NameRecord", "StoredBlob", "TokenInfo", "parsed", "stored"]

ShapeT = TypeVar("ShapeT", bound=wire.Shape)


@dataclass(frozen=True)
class StoredBlob:
    """A blob an upload stored (or found stored already)."""

    digest: str
    size: int
    created: bool = False  # newly stored by this call


def parsed(shape: type[ShapeT], body: Any) -> ShapeT:
    """``body`` as a record of the API; members it does not know are ignored."""
    try:
        return shape.from_json(body)
    except wire.WireError as error:
        raise UnexpectedAnswer(str(error)) from error


def stored(body: Any, status: int) -> StoredBlob:
    """The blob of a ``201`` (newly stored) or ``200`` answer of an upload."""
    blob = parsed(wire.Blob, body)
    return StoredBlob(blob.digest, blob.size, created=status == 201)
