"""The permission matrix: every operation x token kind x target on one --private server, each
answer compared with what the rules of docs/API.md say (written out below, once, as code).

The rules (docs/API.md, "Authentication, tokens and policies"):
1. No token, or an expired or revoked one: 401 for everything (the server is private).
2. Reads (a name, its history, a listing, a blob) need a read scope covering the name: admin
   tokens and tokens without read prefixes read every name; others read their read and write
   prefixes. Else 403 forbidden (a listing leaves the name out; a blob is readable through a
   name the token may read).
3. Writes (create, update, promote, delete) need a write prefix covering the name (at segment
   boundaries: investigate/job1 does not cover investigate/job10): else 403 forbidden.
4. Under an immutable prefix a name is created once: update and delete give 403 immutable-name,
   whoever asks. Under a protected prefix only admin tokens delete: else 403 protected-name.
5. Minting a token for a prefix: admin tokens may; tokens with the mint right may when one of
   their write prefixes covers it; else 403 forbidden.
6. Uploading a blob needs any write prefix.
7. Setting a policy (here on a prefix under the target) needs an admin token: else 403 forbidden.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.conftest import AnyServer, HttpServerFactory
from tests.helpers import digest_of
from tests.name_helpers import create_only, if_match
from tests.policy_helpers import call, mint, set_policy


@dataclass(frozen=True)
class Kind:
    """A kind of caller: what its token may do (None: no token, or one that is not valid)."""

    write: tuple[str, ...] = ()
    read: tuple[str, ...] | None = None
    mint: bool = False
    valid: bool = True


KINDS = {
    "admin": Kind(write=("",), mint=True),
    "minting": Kind(write=("investigate",), mint=True),
    "job": Kind(write=("investigate/job1",)),
    "expired": Kind(write=("investigate/job1",), valid=False),
    "revoked": Kind(write=("investigate/job1",), valid=False),
    "read-scoped": Kind(read=("investigate/job1",)),
    "none": Kind(valid=False),
    # Not an admin, but writes the protected and immutable prefixes: their rules show.
    "release-manager": Kind(write=("prod", "release")),
}
TARGETS = {
    "inside": "investigate/job1",
    "sibling": "investigate/job10",
    "outside": "other",
    "protected": "prod",
    "immutable": "release",
}
OPERATIONS = (
    "read",
    "history",
    "list",
    "blob",
    "create",
    "update",
    "promote",
    "delete",
    "mint",
    "upload",
    "policy",
)
PROTECTED, IMMUTABLE = {"prod"}, {"release"}
SOURCE = "investigate/job1/source"  # what promotions copy: readable by every valid kind


def covers(prefix: str, name: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + "/")


def expected(operation: str, kind: Kind, target: str) -> tuple[int, str]:
    """What the rules above say: the status and the problem code (or a word for successes)."""
    base = TARGETS[target]
    name = f"{base}/x"
    if not kind.valid:
        return 401, "unauthorized"  # rule 1
    if operation in ("read", "history", "list", "blob"):  # rule 2
        scope = None if "" in kind.write or kind.read is None else kind.read + kind.write
        readable = scope is None or any(covers(prefix, name) for prefix in scope)
        if operation == "list":
            return 200, "listed" if readable else "hidden"
        return (200, "ok") if readable else (403, "forbidden")
    if operation == "mint":  # rule 5
        admin = "" in kind.write
        if admin or (kind.mint and any(covers(prefix, base) for prefix in kind.write)):
            return 201, "minted"
        return 403, "forbidden"
    if operation == "upload":  # rule 6
        return (201, "stored") if kind.write else (403, "forbidden")
    if operation == "policy":  # rule 7
        return (201, "ok") if "" in kind.write else (403, "forbidden")
    if not any(covers(prefix, name) for prefix in kind.write):  # rule 3
        return 403, "forbidden"
    immutable, protected = base in IMMUTABLE, base in PROTECTED
    if operation in ("update", "delete") and immutable:  # rule 4
        return 403, "immutable-name"
    if operation == "delete" and protected and "" not in kind.write:
        return 403, "protected-name"
    return {"create": (201, "ok"), "promote": (201, "ok"), "update": (200, "ok")}.get(
        operation, (204, "ok")
    )


@dataclass
class World:
    server: AnyServer
    secrets: dict[str, str | None]
    blobs: dict[str, bytes]  # per target: the blob its names point at


async def build_world(http: aiohttp.ClientSession, server: AnyServer) -> World:
    admin = server.admin_token
    await set_policy(http, server, "prod", protected=True)
    await set_policy(http, server, "release", immutable=True)
    scheduler = await mint(
        http, server, admin, label="scheduler", write_prefixes=["investigate"], rights=["mint"]
    )
    minter = scheduler["token"]
    job = await mint(http, server, minter, label="job1", write_prefixes=["investigate/job1"])
    expired = await mint(http, server, minter, write_prefixes=["investigate/job1"], expires_in=0.5)
    revoked = await mint(http, server, minter, write_prefixes=["investigate/job1"])
    status, _ = await call(http, server, "DELETE", f"/v1/tokens/{revoked['id']}", minter)
    assert status == 200
    reader = await mint(http, server, admin, label="reader", read_prefixes=["investigate/job1"])
    manager = await mint(http, server, admin, write_prefixes=["prod", "release"])
    secrets: dict[str, str | None] = {
        "admin": admin,
        "minting": minter,
        "job": job["token"],
        "expired": expired["token"],
        "revoked": revoked["token"],
        "read-scoped": reader["token"],
        "none": None,
        "release-manager": manager["token"],
    }
    world = World(server, secrets, {target: f"blob of {target}".encode() for target in TARGETS})
    for data in world.blobs.values():
        status, _ = await call(
            http, server, "PUT", f"/v1/blobs/{digest_of(data)}", admin, data=data
        )
        assert status == 201
    await admin_names(http, world)
    await asyncio.sleep(0.6)  # the expired token's half second is over
    return world


async def admin_names(http: aiohttp.ClientSession, world: World) -> None:
    """Every name the operations expect to exist, created by the admin."""
    names = [SOURCE] + [f"{base}/x" for base in TARGETS.values()]
    names += [
        target_name(operation, kind, target)
        for operation, kind, target in itertools.product(("update", "delete"), KINDS, TARGETS)
    ]
    for name in names:
        target = next(t for t, base in TARGETS.items() if covers(base, name))
        body = {"digest": digest_of(world.blobs[target])}
        status, answer = await call(
            http,
            world.server,
            "PUT",
            f"/v1/names/{name}",
            world.server.admin_token,
            json=body,
            headers=create_only(),
        )
        assert status == 201, (name, answer)


def target_name(operation: str, kind: str, target: str) -> str:
    return f"{TARGETS[target]}/{kind}-{operation}"


async def attempt(
    http: aiohttp.ClientSession, world: World, operation: str, kind: str, target: str
) -> tuple[int, str]:
    """Do the operation; its status and the problem code (or the same words as expected())."""
    server, token = world.server, world.secrets[kind]
    shared, own = f"{TARGETS[target]}/x", target_name(operation, kind, target)
    blob = world.blobs[target]
    requests: dict[str, tuple[str, str, dict[str, Any]]] = {
        "read": ("GET", f"/v1/names/{shared}", {}),
        "history": ("GET", f"/v1/history/{shared}", {}),
        "list": ("GET", f"/v1/names?prefix={shared}", {}),
        "blob": ("GET", f"/v1/blobs/{digest_of(blob)}", {}),
        "create": (
            "PUT",
            f"/v1/names/{own}",
            {"json": {"digest": digest_of(blob)}, "headers": create_only()},
        ),
        "update": (
            "PUT",
            f"/v1/names/{own}",
            {"json": {"digest": digest_of(blob), "metadata": {"n": 2}}, "headers": if_match(1)},
        ),
        "promote": (
            "PUT",
            f"/v1/names/{own}",
            {"json": {"source": SOURCE}, "headers": create_only()},
        ),
        "delete": ("DELETE", f"/v1/names/{own}", {"headers": if_match(1)}),
        "mint": ("POST", "/v1/tokens", {"json": {"write_prefixes": [TARGETS[target]]}}),
        "upload": ("POST", "/v1/blobs", {"data": f"{kind} {target}".encode()}),
        "policy": ("PUT", f"/v1/policies/{own}", {"json": {"keep_versions": 3}}),
    }
    method, path, kwargs = requests[operation]
    if method == "GET" and operation == "blob":
        async with http.get(
            f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"} if token else {}
        ) as response:
            raw = await response.read()
            if response.status == 200:
                assert raw == blob
                return 200, "ok"
            return response.status, json.loads(raw)["code"]
    status, body = await call(http, server, method, path, token, **kwargs)
    if status >= 400:
        return status, body["code"]
    if operation == "list":
        return status, "listed" if [r["name"] for r in body["names"]] == [shared] else "hidden"
    return status, {"mint": "minted", "upload": "stored"}.get(operation, "ok")


async def test_permission_matrix(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory("--private")
    world = await build_world(http, server)
    cases = list(itertools.product(OPERATIONS, KINDS, TARGETS))
    semaphore = asyncio.Semaphore(16)

    async def check(operation: str, kind: str, target: str) -> str | None:
        async with semaphore:
            got = await attempt(http, world, operation, kind, target)
        want = expected(operation, KINDS[kind], target)
        return None if got == want else f"{operation} by {kind} on {target}: {got}, not {want}"

    outcomes = await asyncio.gather(*(check(*case) for case in cases))
    mismatches = [outcome for outcome in outcomes if outcome]
    assert not mismatches, "\n".join(mismatches)
    assert len(cases) == 11 * 8 * 5
    # The matrix is not trivially one answer: every kind of answer occurs.
    answers = {expected(op, KINDS[kind], target) for op, kind, target in cases}
    assert {
        (401, "unauthorized"),
        (403, "forbidden"),
        (403, "protected-name"),
        (403, "immutable-name"),
        (200, "hidden"),
        (201, "minted"),
        (204, "ok"),
    } <= answers
