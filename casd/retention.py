"""Retention: delete the names a policy's ``delete_after`` lets go, with the rule as the actor.

For every policy with ``delete_after``, the names it covers (when it is the most specific such
policy covering them) that have not changed for that long are deleted like any other deletion:
under the name's locks, only if it is still at the version found (so a name changed meanwhile
stays), recorded in its history. Protected and immutable names are never deleted by retention.
``casd gc`` then collects the blobs nothing keeps (``keep_versions`` policies decide how much of
a name's history keeps its blobs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from casd import metrics
from casd.database import Database
from casd.errors import ImmutableName, NameNotFound, PreconditionFailed, ProtectedName
from casd.names import NameService, Precondition
from casd.policies import Policy

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class RetentionReport:
    deleted: int = 0
    names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "names": self.names}


async def apply_retention(db: Database) -> RetentionReport:
    """Delete every name a retention policy lets go now."""
    report = RetentionReport()
    names = NameService(db)
    for row in await db.fetch("retention_policies"):
        policy = Policy(row["prefix"], delete_after=row["delete_after"])
        await _apply(db, names, policy, report)
    if report.deleted:
        log.info("retention deleted %d names", report.deleted)
    return report


async def _apply(db: Database, names: NameService, policy: Policy, report: RetentionReport) -> None:
    after = ""
    while rows := await db.fetch(
        "retention_candidates", policy.prefix, policy.delete_after, after, BATCH
    ):
        for row in rows:
            if await delete_if_unchanged(names, row["name"], row["version"], policy):
                report.deleted += 1
                report.names.append(row["name"])
        after = rows[-1]["name"]


async def delete_if_unchanged(names: NameService, name: str, version: int, policy: Policy) -> bool:
    """Delete ``name`` for ``policy`` if it is still at ``version``; whether it was."""
    expected = Precondition.match(frozenset({version}))
    try:
        await names.delete(name, expected, policy.retention_actor)
    except (PreconditionFailed, NameNotFound, ProtectedName, ImmutableName):
        return False  # changed, deleted or guarded since it was found: it stays
    metrics.RETENTION_DELETED.inc()
    return True
