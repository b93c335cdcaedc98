"""Policies per name prefix: protection, immutability, quotas and retention.

A policy applies to the names its prefix covers (the prefix itself and what continues it after
a ``/``). Protection and immutability apply when any covering policy sets them; every covering
quota must hold; for retention (``delete_after``, ``keep_versions``) the most specific covering
policy that sets a value decides. Policies live in PostgreSQL, so every process and node applies
the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from casd import wire
from casd.database import Database, Queries
from casd.errors import (
    ImmutableName,
    InvalidRequest,
    NamespaceQuotaExceeded,
    PolicyNotFound,
    ProtectedName,
)
from casd.names import NameRecord, validate_name

# What a policy body may set, and the Python type of each.
# Retention subtracts delete_after from the clock in PostgreSQL: far more than this is out of
# a timestamp's range there and would stop every retention run.
MAX_DELETE_AFTER = 100 * 365 * 86400  # 100 years
_SETTABLE: dict[str, tuple[type, ...]] = {
    "protected": (bool,),
    "immutable": (bool,),
    "quota_bytes": (int,),
    "delete_after": (int, float),
    "keep_versions": (int,),
}


@dataclass(frozen=True)
class Policy:
    prefix: str
    protected: bool = False
    immutable: bool = False
    quota_bytes: int | None = None
    delete_after: float | None = None  # seconds after a name's last change
    keep_versions: int | None = None
    updated_at: datetime | None = None
    updated_by: str = ""
    used_bytes: int = 0  # bytes the names under the prefix reference now

    @classmethod
    def from_row(cls, row: Any) -> Policy:
        return cls(**{field.name: row[field.name] for field in fields(cls)})

    @classmethod
    def from_json(cls, prefix: str, body: Any) -> Policy:
        """A policy from a request body; members left out are off (a PUT replaces the policy)."""
        if not isinstance(body, dict):
            raise InvalidRequest("a policy is a JSON object")
        unknown = body.keys() - _SETTABLE.keys()
        if unknown:
            raise InvalidRequest(f"unknown policy members: {', '.join(sorted(unknown)[:5])}")
        values: dict[str, Any] = {}
        for key, value in body.items():
            if value is None:
                continue
            if isinstance(value, bool) != (_SETTABLE[key] == (bool,)) or not isinstance(
                value, _SETTABLE[key]
            ):
                raise InvalidRequest(f"{key} has the wrong type")
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (value < 0 or (isinstance(value, float) and not math.isfinite(value)))
            ):
                raise InvalidRequest(f"{key} must be a finite number, at least 0")
            values[key] = value
        if values.get("delete_after") == 0:
            raise InvalidRequest("delete_after must be more than 0 seconds")
        if (
            values.get("quota_bytes", 0) >= 2**63
            or values.get("keep_versions", 0) >= 2**31
            or values.get("delete_after", 0) > MAX_DELETE_AFTER
        ):
            raise InvalidRequest("a number in the policy is too large")
        return cls(valid_policy_prefix(prefix), **values)

    def as_dict(self) -> dict[str, Any]:
        return wire.PolicyRecord.of(self).to_json()

    @property
    def retention_actor(self) -> str:
        """Who history says deleted a name under this policy's retention."""
        return f"retention:{self.prefix} (delete after {self.delete_after:g}s)"


def valid_policy_prefix(prefix: str) -> str:
    normalized = prefix.strip("/")
    if not normalized:
        raise InvalidRequest("a policy needs a prefix; the empty prefix cannot have one")
    return validate_name(normalized)


class PolicyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self) -> list[Policy]:
        return [Policy.from_row(row) for row in await self.db.fetch("list_policies", None)]

    async def get(self, prefix: str) -> Policy:
        rows = await self.db.fetch("list_policies", valid_policy_prefix(prefix))
        if not rows:
            raise PolicyNotFound(f"no policy for {prefix!r}")
        return Policy.from_row(rows[0])

    async def set(self, policy: Policy, actor: str) -> tuple[Policy, bool]:
        """Create or replace the policy of ``policy.prefix``; the policy and whether it is new.
        One transaction: a concurrent delete waits for it, so the answer is what was stored."""
        async with self.db.transaction() as tx:
            created: bool = await tx.fetchval(
                "upsert_policy",
                policy.prefix,
                policy.protected,
                policy.immutable,
                policy.quota_bytes,
                policy.delete_after,
                policy.keep_versions,
                actor,
            )
            rows = await tx.fetch("list_policies", policy.prefix)
        return Policy.from_row(rows[0]), created

    async def delete(self, prefix: str) -> None:
        if await self.db.fetchval("delete_policy", valid_policy_prefix(prefix)) is None:
            raise PolicyNotFound(f"no policy for {prefix!r}")


@dataclass(frozen=True)
class NamePolicies:
    """The policies covering one name, read (and their quotas locked) in a name write."""

    name: str
    policies: tuple[Policy, ...]

    @classmethod
    async def lock(cls, tx: Queries, name: str) -> NamePolicies:
        """The policies, with their quotas locked until commit (for writes that add bytes)."""
        policies = await cls.read(tx, name)
        if any(policy.quota_bytes is not None for policy in policies.policies):
            await tx.fetch("lock_quotas_for_name", name)
            policies = await cls.read(tx, name)  # as they are now that they are held
        return policies

    @classmethod
    async def read(cls, tx: Queries, name: str) -> NamePolicies:
        rows = await tx.fetch("policies_for_name", name)
        return cls(name, tuple(Policy.from_row(row) for row in rows))

    def _first(self, flag: str) -> Policy | None:
        return next((policy for policy in self.policies if getattr(policy, flag)), None)

    async def check_write(self, tx: Queries, current: NameRecord | None) -> None:
        """Immutable names are created once: no change, and no second creation."""
        policy = self._first("immutable")
        if policy is None:
            return
        if current is not None:
            raise ImmutableName(f"{self.name!r} is under the immutable prefix {policy.prefix!r}")
        if await tx.fetchval("name_ever_existed", self.name):
            raise ImmutableName(
                f"{self.name!r} existed once already under the immutable prefix {policy.prefix!r}"
            )

    def check_delete(self, admin: bool) -> None:
        immutable = self._first("immutable")
        if immutable is not None:
            raise ImmutableName(f"{self.name!r} is under the immutable prefix {immutable.prefix!r}")
        protected = self._first("protected")
        if protected is not None and not admin:
            raise ProtectedName(
                f"{self.name!r} is under the protected prefix {protected.prefix!r}:"
                " only an admin token may delete it"
            )

    async def check_quotas(self, tx: Queries, digest: str) -> None:
        """Every covering quota holds once the name points at ``digest`` (a change that adds no
        bytes is allowed even where a quota was lowered below what is referenced)."""
        for policy in self.policies:
            if policy.quota_bytes is None:
                continue
            row = await tx.fetchrow("prefix_usage_change", policy.prefix, self.name, digest)
            assert row is not None
            if row["after"] > policy.quota_bytes and row["after"] > row["before"]:
                raise NamespaceQuotaExceeded(
                    f"the names under {policy.prefix!r} would reference {row['after']} bytes;"
                    f" its quota is {policy.quota_bytes}",
                    prefix=policy.prefix,
                    quota_bytes=policy.quota_bytes,
                    used_bytes=row["before"],
                )
