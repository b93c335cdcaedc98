"""Retention, the scheduler's day, promotion with provenance, and the policy commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import aiohttp
import pytest

from casd.core import Core
from casd.database import Database
from casd.maintenance import RETENTION_LOCK, maintenance_lock, retention_if_free
from casd.names import NameService
from casd.policies import Policy
from casd.retention import delete_if_unchanged as retention_delete
from tests.conftest import AnyServer, HttpServerFactory, ServerFactory
from tests.helpers import blob_path, digest_of
from tests.inprocess import InProcessServer
from tests.integrity_helpers import db_execute, run_json
from tests.name_helpers import create_only, history, if_match
from tests.policy_helpers import call, mint, name_exists, set_policy
from tests.test_tokens_http import cli


async def put(
    http: aiohttp.ClientSession,
    server: AnyServer,
    token: str,
    name: str,
    data: bytes,
    condition: dict[str, str] | None = None,
) -> tuple[int, Any]:
    return await call(
        http,
        server,
        "PUT",
        f"/v1/names/{name}",
        token,
        json={"digest": digest_of(data)},
        headers=condition or create_only(),
    )


async def upload(http: aiohttp.ClientSession, server: AnyServer, token: str, data: bytes) -> int:
    status, _ = await call(http, server, "PUT", f"/v1/blobs/{digest_of(data)}", token, data=data)
    return status


async def wait_until_gone(http: aiohttp.ClientSession, server: AnyServer, name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await name_exists(http, server, name):
        assert loop.time() < deadline, f"{name} was never deleted by retention"
        await asyncio.sleep(0.2)


async def test_a_scheduler_hands_a_job_a_token_and_retention_cleans_up_after_it(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory(env={"CASD_RETENTION_INTERVAL": "0.5s"})
    admin = server.admin_token
    await set_policy(http, server, "investigate", delete_after=4, keep_versions=0)
    scheduler = await mint(
        http, server, admin, label="scheduler", write_prefixes=["investigate"], rights=["mint"]
    )
    # The scheduler mints the job's token over HTTP, valid for the job's lifetime.
    job = await mint(
        http,
        server,
        scheduler["token"],
        label="job 42",
        write_prefixes=["investigate/42"],
        expires_in=2.5,
    )
    disk, log = os.urandom(4000), os.urandom(300)
    for data in (disk, log):
        assert await upload(http, server, job["token"], data) == 201
    assert (await put(http, server, job["token"], "investigate/42/disk.qcow2", disk))[0] == 201
    assert (await put(http, server, job["token"], "investigate/42/log", log))[0] == 201
    for outside in ("investigate/420/x", "investigate/43/x", "prod/x"):
        status, problem = await put(http, server, job["token"], outside, log)
        assert (status, problem["code"]) == (403, "forbidden"), outside

    # The job is over: its token expires.
    await asyncio.sleep(2.6)
    status, problem = await put(http, server, job["token"], "investigate/42/late", log)
    assert (status, problem["code"]) == (401, "unauthorized") and "expired" in problem["detail"]
    assert await name_exists(http, server, "investigate/42/disk.qcow2"), "not yet 4s old"

    # Retention (the periodic maintenance of casd serve) deletes the job's names after 4s.
    for name in ("investigate/42/disk.qcow2", "investigate/42/log"):
        await wait_until_gone(http, server, name)
    entries = await history(http, server, "investigate/42/disk.qcow2")
    job_actor = f"token:{job['id']} (job 42)"
    assert [(entry["action"], entry["actor"]) for entry in entries] == [
        ("delete", "retention:investigate (delete after 4s)"),
        ("create", job_actor),
    ]
    status, listed = await call(http, server, "GET", "/v1/tokens", scheduler["token"])
    minted = {entry["id"]: entry for entry in listed["tokens"]}
    assert minted[job["id"]]["minted_by"] == scheduler["id"]

    # casd gc reclaims the bytes: keep_versions 0 keeps nothing of investigate/ history.
    report = run_json(server, "gc", "--grace", "0")
    assert {entry["digest"] for entry in report["blobs"]} == {digest_of(disk), digest_of(log)}
    assert report["collected_bytes"] == 4300
    for data in (disk, log):
        assert not blob_path(server.data_dir, digest_of(data)).exists()
        async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
            assert response.status == 404


async def test_retention_on_two_nodes_one_killed(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """Every node applies retention, one at a time: each name is deleted once, and a node
    killed with SIGKILL (its lock goes with its connection) leaves the work to the other."""
    env = {"CASD_RETENTION_INTERVAL": "0.3s"}
    first = casd_server_factory(env=env)
    second = casd_server_factory(env=env, database_url=first.database_url, data_dir=first.data_dir)
    admin = first.admin_token
    await set_policy(http, first, "nightly", delete_after=2)
    data = os.urandom(100)
    await upload(http, first, admin, data)
    names = [f"nightly/{n}" for n in range(40)]
    for name in names:
        assert (await put(http, first, admin, name, data))[0] == 201
    first.stop(signal.SIGKILL)
    for name in names:
        await wait_until_gone(http, second, name)
    for name in names:
        entries = await history(http, second, name)
        assert [entry["action"] for entry in entries] == ["delete", "create"], name
    # Both alive: still exactly one deletion each.
    first.start()
    more = [f"nightly/again/{n}" for n in range(40)]
    for name in more:
        assert (await put(http, first, admin, name, data))[0] == 201
    for name in more:
        await wait_until_gone(http, first, name)
        assert [entry["action"] for entry in await history(http, first, name)] == [
            "delete",
            "create",
        ]


async def test_gc_applies_retention_and_its_exceptions(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server, admin = module_http_server, module_http_server.admin_token
    await set_policy(http, server, "ci", delete_after=60, keep_versions=0)
    await set_policy(http, server, "ci/keep", protected=True)
    await set_policy(http, server, "ci/long", delete_after=3600)  # the more specific rule wins
    blobs = {key: os.urandom(500 + n) for n, key in enumerate("abcdef")}
    for data in blobs.values():
        await upload(http, server, admin, data)
    for name, key in (("ci/a", "a"), ("ci/keep/b", "b"), ("ci/long/c", "c"), ("cix/d", "d")):
        assert (await put(http, server, admin, name, blobs[key]))[0] == 201
    assert (await put(http, server, admin, "ci/e", blobs["e"]))[0] == 201
    # Two minutes pass (for the names), and then ci/e changes.
    await db_execute(server, "UPDATE names SET updated_at = now() - interval '2 minutes'")
    assert (await put(http, server, admin, "ci/e", blobs["f"], if_match(1)))[0] == 200
    dry = run_json(server, "gc", "--grace", "0", "--dry-run")
    assert dry["retention"]["deleted"] == 0 and await name_exists(http, server, "ci/a")

    report = run_json(server, "gc", "--grace", "0")
    assert report["retention"] == {"deleted": 1, "names": ["ci/a"]}
    for name in ("ci/keep/b", "ci/long/c", "cix/d", "ci/e"):
        assert await name_exists(http, server, name), name
    entries = await history(http, server, "ci/a")
    assert entries[0]["actor"] == "retention:ci (delete after 60s)"
    collected = {entry["digest"] for entry in report["blobs"]}
    # ci/a's blob and the one ci/e left: under ci/, gc keeps no earlier versions.
    assert {digest_of(blobs["a"]), digest_of(blobs["e"])} <= collected
    assert not collected & {digest_of(blobs[key]) for key in "bcdf"}


async def test_retention_leaves_a_name_that_changed_since_it_was_found(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Retention deletes a name only at the version it found: a writer in between wins."""
    server, admin = module_http_server, module_http_server.admin_token
    data = os.urandom(300)
    await upload(http, server, admin, data)
    assert (await put(http, server, admin, "race/x", data))[0] == 201
    assert (await put(http, server, admin, "race/x", data, if_match(1)))[0] == 200
    db = await Database.connect(module_http_server.database_url or "", max_size=2)
    try:
        policy = Policy("race", delete_after=1)
        assert await retention_delete(NameService(db), "race/x", 1, policy) is False
        assert await name_exists(http, server, "race/x")
        assert await retention_delete(NameService(db), "race/x", 2, policy) is True
        assert not await name_exists(http, server, "race/x")
    finally:
        await db.close()


async def test_one_process_applies_retention_at_a_time(service: Core) -> None:
    async with maintenance_lock(service.db, RETENTION_LOCK) as held:
        assert held
        assert await retention_if_free(service.db) is False, "another process holds the lock"
    assert await retention_if_free(service.db) is True


@pytest.mark.e2e  # casd promote runs as a process
async def test_promotion_copies_a_name_and_records_where_it_came_from(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server, admin = module_http_server, module_http_server.admin_token
    await set_policy(http, server, "shipped", protected=True)
    release = (await mint(http, server, admin, write_prefixes=["shipped", "staged"]))["token"]
    first, second = os.urandom(700), os.urandom(800)
    for data in (first, second):
        await upload(http, server, admin, data)
    status, _ = await call(
        http,
        server,
        "PUT",
        "/v1/names/staged/app",
        release,
        json={"digest": digest_of(first), "metadata": {"build": 1}},
        headers=create_only(),
    )
    assert status == 201

    async def promote(body: dict[str, Any], condition: dict[str, str]) -> tuple[int, Any]:
        return await call(
            http, server, "PUT", "/v1/names/shipped/app", release, json=body, headers=condition
        )

    status, record = await promote({"source": "staged/app", "source_version": 1}, create_only())
    assert status == 201
    assert (record["digest"], record["metadata"], record["version"]) == (
        digest_of(first),
        {"build": 1},
        1,
    )
    await put(http, server, release, "staged/app", second, if_match(1))
    refusals: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        ({"source": "staged/app", "source_version": 1}, if_match(1), 412, "precondition-failed"),
        ({"source": "staged/none"}, if_match(1), 404, "name-not-found"),
        ({"source": "staged/app"}, if_match(7), 412, "precondition-failed"),
        ({"source": "staged/app", "digest": digest_of(first)}, if_match(1), 400, "invalid-request"),
        ({"source": "staged/app", "source_version": 0}, if_match(1), 400, "invalid-request"),
        ({"source": "../x"}, if_match(1), 400, "invalid-name"),
    ]
    for body, condition, code, slug in refusals:
        status, problem = await promote(body, condition)
        assert (status, problem["code"]) == (code, slug), body

    # Of many promotions holding the same version, exactly one wins.
    results = await asyncio.gather(
        *(promote({"source": "staged/app"}, if_match(1)) for _ in range(8))
    )
    assert sorted(status for status, _ in results) == [200] + [412] * 7
    entries = await history(http, server, "shipped/app")
    assert [(entry["version"], entry["source"]) for entry in entries] == [
        (2, {"name": "staged/app", "version": 2}),
        (1, {"name": "staged/app", "version": 1}),
    ]
    assert entries[0]["digest"] == digest_of(second)
    assert (await history(http, server, "staged/app"))[0]["source"] is None

    # The CLI: casd promote SRC DST --expect-version V.
    result = cli(
        server, "promote", "staged/app", "shipped/app", "--expect-version", "2", token=release
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shipped/app version 3: {digest_of(second)} (from staged/app)"
    stale = cli(
        server, "promote", "staged/app", "shipped/app", "--expect-version", "2", token=release
    )
    assert stale.returncode != 0 and "precondition-failed" in stale.stderr
    # Protected: the release token may promote into shipped/ but not delete there.
    status, problem = await call(
        http, server, "DELETE", "/v1/names/shipped/app", release, headers=if_match(3)
    )
    assert (status, problem["code"]) == (403, "protected-name")


@pytest.mark.e2e  # the casd policy commands run as processes
async def test_policy_commands_and_bad_policies(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server, admin = module_http_server, module_http_server.admin_token
    result = cli(
        server, "policy", "set", "vault", "--immutable", "--quota", "1MiB", "--json", token=admin
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["immutable"], record["quota_bytes"], record["protected"]) == (True, 2**20, False)
    result = cli(
        server, "policy", "set", "vault", "--delete-after", "14d", "--no-quota", token=admin
    )
    assert result.returncode == 0, result.stderr
    status, record = await call(http, server, "GET", "/v1/policies/vault")
    assert (record["immutable"], record["quota_bytes"], record["delete_after"]) == (
        True,
        None,
        14 * 86400,
    )
    assert record["updated_by"].startswith("token:")
    listing = cli(server, "policy", "list", token=admin)
    assert "vault\timmutable\tdelete after 1.2096e+06s" in listing.stdout
    scoped = (await mint(http, server, admin, write_prefixes=["vault"]))["token"]
    refused = cli(server, "policy", "set", "vault", "--protected", token=scoped)
    assert refused.returncode != 0 and "forbidden" in refused.stderr
    bad: list[Any] = [
        {"protected": "yes"},
        {"quota_bytes": -1},
        {"delete_after": 0},
        {"keep_versions": 1.5},
        {"delete_after": 10**400},
        {"delete_after": 1e300},  # would put retention's cutoff before any timestamp
        {"quota_bytes": 10**400},
        {"keep_versions": 10**400},
        {"retain": True},
        [],
    ]
    for body in bad:
        status, problem = await call(http, server, "PUT", "/v1/policies/vault", admin, json=body)
        assert (status, problem["code"]) == (400, "invalid-request"), body
    status, problem = await call(http, server, "PUT", "/v1/policies/a//b", admin, json={})
    assert (status, problem["code"]) == (400, "invalid-name")
    assert cli(server, "policy", "rm", "vault", token=admin).returncode == 0
    status, problem = await call(http, server, "GET", "/v1/policies/vault")
    assert (status, problem["code"]) == (404, "policy-not-found")
    gone = cli(server, "policy", "rm", "vault", token=admin)
    assert gone.returncode != 0 and "policy-not-found" in gone.stderr
