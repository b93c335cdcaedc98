"""A name's history as a person reads it: each change beside the one before it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casd.names import HistoryEntry

_ABSENT = object()


@dataclass(frozen=True)
class MetadataChange:
    key: str
    kind: str  # added, removed, changed
    old: Any
    new: Any


@dataclass(frozen=True)
class Change:
    """One history entry and what it changed compared with the entry before it."""

    entry: HistoryEntry
    digest_changed: bool
    metadata_changes: list[MetadataChange]


def metadata_diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[MetadataChange]:
    """The keys added, removed or changed from ``old`` to ``new``, in key order."""
    before, after = old or {}, new or {}
    changes = []
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if was is _ABSENT:
            changes.append(MetadataChange(key, "added", None, now))
        elif now is _ABSENT:
            changes.append(MetadataChange(key, "removed", was, None))
        elif was != now:
            changes.append(MetadataChange(key, "changed", was, now))
    return changes


def changes(entries: list[HistoryEntry], older: HistoryEntry | None) -> list[Change]:
    """``entries`` newest first, each compared with the next older one (``older`` for the last
    of them: the entry just past the page, None when the history starts there)."""
    result = []
    for index, entry in enumerate(entries):
        previous = entries[index + 1] if index + 1 < len(entries) else older
        if entry.action == "delete":
            result.append(Change(entry, True, []))
            continue
        before = previous.metadata if previous is not None else None
        result.append(
            Change(
                entry,
                digest_changed=entry.digest != entry.previous_digest,
                metadata_changes=metadata_diff(before, entry.metadata),
            )
        )
    return result
