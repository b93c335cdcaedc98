"""Tokens over HTTP: minting within the minter's scope, introspection, listing without secrets,
revocation at once on every node (and of what the token minted), expiry, the CLI over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from tests.conftest import AnyServer, HttpServerFactory
from tests.helpers import digest_of
from tests.inprocess import InProcessServer
from tests.name_helpers import create_only
from tests.policy_helpers import call, mint, own_token


async def test_minting_stays_within_the_minter(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server, admin = module_http_server, module_http_server.admin_token
    scheduler = await mint(
        http,
        server,
        admin,
        label="scheduler",
        write_prefixes=["investigate"],
        rights=["mint"],
        expires_in="2h",
        quota_bytes=10_000,
    )
    minter = scheduler["token"]
    assert scheduler["rights"] == ["mint"] and scheduler["minted_by"] is not None
    job = await mint(http, server, minter, label="job 7", write_prefixes=["investigate/7"])
    # Left out, the expiry and the budget are the minter's; a shorter expiry is kept.
    assert (job["expires_at"], job["quota_bytes"]) == (scheduler["expires_at"], 10_000)
    assert job["minted_by"] == scheduler["id"] and job["rights"] == []
    short = await mint(http, server, minter, write_prefixes=["investigate/8"], expires_in=60)
    assert short["expires_at"] < scheduler["expires_at"]
    nested = await mint(
        http, server, minter, write_prefixes=["investigate/9"], rights=["mint"], quota_bytes=5
    )
    await mint(http, server, nested["token"], write_prefixes=["investigate/9/a"])

    refused = [
        (minter, {"write_prefixes": ["investigate2"]}),
        (minter, {"write_prefixes": ["other/investigate"]}),
        (minter, {"write_prefixes": [""]}),
        (minter, {"write_prefixes": ["investigate/7"], "expires_in": "3h"}),
        (minter, {"write_prefixes": ["investigate/7"], "quota_bytes": 10_001}),
        (nested["token"], {"write_prefixes": ["investigate/7"]}),
        (job["token"], {"write_prefixes": ["investigate/7/sub"]}),
    ]
    for secret, spec in refused:
        status, problem = await call(http, server, "POST", "/v1/tokens", secret, json=spec)
        assert (status, problem["code"]) == (403, "forbidden"), spec
    status, problem = await call(http, server, "POST", "/v1/tokens", json={"write_prefixes": []})
    assert (status, problem["code"]) == (401, "unauthorized")
    invalid = [
        ({"write_prefixes": ["a//b"]}, "invalid-name"),
        ({"write_prefixes": "investigate/1"}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "rights": ["admin"]}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "expires_in": "soon"}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "expires_in": -5}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "quota_bytes": -1}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "secret": "mine"}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "label": "\ud800"}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "label": "a\x00b"}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "label": "x" * 201}, "invalid-request"),
        ({"write_prefixes": ["investigate/\ud800"]}, "invalid-name"),
        ({"write_prefixes": ["investigate/1"] * 101}, "invalid-request"),
        ({"read_prefixes": "investigate/1"}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "expires_in": 1e300}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "expires_in": 10**400}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "quota_bytes": 2**63}, "invalid-request"),
        ({"write_prefixes": ["investigate/1"], "rights": "mint"}, "invalid-request"),
        ([1, 2], "invalid-request"),
    ]
    for body, code in invalid:
        status, problem = await call(http, server, "POST", "/v1/tokens", minter, json=body)
        assert (status, problem["code"]) == (400, code), body

    # Introspection: the four fields clients rely on, and the rest.
    me = await own_token(http, server, job["token"])
    assert me["id"] == job["id"] and me["label"] == "job 7"
    assert (me["write_prefixes"], me["admin"], me["rights"]) == (["investigate/7"], False, [])
    assert (me["read_prefixes"], me["expires_at"]) == (None, scheduler["expires_at"])
    assert (me["quota_bytes"], me["used_bytes"]) == (10_000, 0)
    assert "token" not in me
    assert (await own_token(http, server, admin))["admin"] is True
    status, problem = await call(http, server, "GET", "/v1/token")
    assert (status, problem["code"]) == (401, "unauthorized")

    # Listing: an admin sees every token, a minter itself and what it minted; never a secret.
    status, listed = await call(http, server, "GET", "/v1/tokens", minter)
    ids = {entry["id"] for entry in listed["tokens"]}
    assert ids == {scheduler["id"], job["id"], short["id"], nested["id"], nested["id"] + 1}
    status, everything = await call(http, server, "GET", "/v1/tokens", admin)
    assert ids < {entry["id"] for entry in everything["tokens"]}
    text = json.dumps(everything)
    assert all(secret not in text for secret in (minter, job["token"], admin))
    status, mine = await call(http, server, "GET", "/v1/tokens", job["token"])
    assert [entry["id"] for entry in mine["tokens"]] == [job["id"]]


async def refused_after(http: aiohttp.ClientSession, node: AnyServer, secret: str) -> float:
    """Seconds until ``node`` refuses the (revoked) token with 401 (0: at the first request)."""
    loop = asyncio.get_running_loop()
    started, attempts = loop.time(), 0
    while True:
        status, problem = await call(http, node, "GET", "/v1/token", secret)
        attempts += 1
        if status == 401:
            assert problem["code"] == "unauthorized"
            return 0.0 if attempts == 1 else loop.time() - started
        assert status == 200 and loop.time() - started < 2
        await asyncio.sleep(0.002)


async def test_revocation_is_at_once_on_every_node_and_takes_what_was_minted(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    first = http_server_factory()
    second = http_server_factory(database_url=first.database_url, data_dir=first.data_dir)
    admin = first.admin_token
    data = os.urandom(100)
    await call(http, first, "PUT", f"/v1/blobs/{digest_of(data)}", admin, data=data)
    delays: list[float] = []
    for round_ in range(5):
        scheduler = await mint(
            http, first, admin, write_prefixes=[f"r{round_}"], rights=["mint"], label="sched"
        )
        job = await mint(http, first, scheduler["token"], write_prefixes=[f"r{round_}/job"])
        grandchild = await mint(http, first, scheduler["token"], write_prefixes=[f"r{round_}/g"])
        secrets = [scheduler["token"], job["token"], grandchild["token"]]
        for node in (first, second):  # every node trusts (and caches) every one of them
            for secret in secrets:
                assert (await call(http, node, "GET", "/v1/token", secret))[0] == 200
        status, body = await call(http, first, "DELETE", f"/v1/tokens/{scheduler['id']}", admin)
        assert status == 200
        assert sorted(body["revoked"]) == sorted([scheduler["id"], job["id"], grandchild["id"]])
        # The revoking server refuses them as soon as it answers; the other node as soon as
        # PostgreSQL's notification reaches it (milliseconds), long before its cache expires.
        for node in (first, second):
            for secret in secrets:
                delay = await refused_after(http, node, secret)
                delays.append(delay)
                assert delay == 0 or node is second, "the revoking server refuses at once"
    assert max(delays) < 0.5, delays
    print(f"revoked tokens refused by the other node after {max(delays) * 1000:.1f} ms at most")
    # Who may revoke what: itself and what it minted; others are not found.
    scheduler = await mint(http, first, admin, write_prefixes=["s"], rights=["mint"])
    job = await mint(http, first, scheduler["token"], write_prefixes=["s/1"])
    other = await mint(http, first, admin, write_prefixes=["s/2"])
    for secret, target in ((job["token"], scheduler["id"]), (scheduler["token"], other["id"])):
        status, problem = await call(http, first, "DELETE", f"/v1/tokens/{target}", secret)
        assert (status, problem["code"]) == (404, "token-not-found")
    status, body = await call(http, first, "DELETE", f"/v1/tokens/{job['id']}", job["token"])
    assert (status, body) == (200, {"revoked": [job["id"]]})
    for path in ("/v1/tokens/abc", "/v1/tokens/99999999999999999999"):
        status, problem = await call(http, first, "DELETE", path, admin)
        assert (status, problem["code"]) == (400, "invalid-request")
    status, problem = await call(http, first, "DELETE", f"/v1/tokens/{job['id']}", admin)
    assert (status, problem["code"]) == (404, "token-not-found")


async def test_an_expired_token_gets_401_saying_it_expired(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    token = (await mint(http, server, server.admin_token, write_prefixes=["exp"], expires_in=1.5))[
        "token"
    ]
    data = os.urandom(50)
    status, _ = await call(http, server, "PUT", f"/v1/blobs/{digest_of(data)}", token, data=data)
    assert status == 201  # valid, and now trusted from the server's cache
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        status, body = await call(http, server, "GET", "/v1/token", token)
        if status == 401:
            break
        assert status == 200
        await asyncio.sleep(0.1)
    assert (status, body["code"]) == (401, "unauthorized")
    assert "expired" in body["detail"]
    status, body = await call(
        http,
        server,
        "PUT",
        "/v1/names/exp/x",
        token,
        json={"digest": digest_of(data)},
        headers=create_only(),
    )
    assert (status, body["code"]) == (401, "unauthorized") and "expired" in body["detail"]


def cli(server: AnyServer, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    """``casd ARGS`` over HTTP, CASD_URL and CASD_TOKEN set as a user's shell would have them."""
    env = {**os.environ, "CASD_URL": server.url, "CASD_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "casd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.e2e  # the casd token commands run as processes
async def test_token_commands_over_http(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    made = cli(
        server,
        "token",
        "create",
        "--write",
        "cli-http",
        "--mint",
        "--expires-in",
        "8h",
        "--quota",
        "1MiB",
        "--name",
        "scheduler",
        token=server.admin_token,
    )
    assert made.returncode == 0, made.stderr
    minter = made.stdout.strip()
    assert minter.startswith("casd_") and "\n" not in minter
    made = cli(server, "token", "create", "--write", "cli-http/job", "--json", token=minter)
    assert made.returncode == 0, made.stderr
    job: dict[str, Any] = json.loads(made.stdout)
    assert (job["quota_bytes"], job["write_prefixes"]) == (1024**2, ["cli-http/job"])
    assert (await own_token(http, server, job["token"]))["id"] == job["id"]
    refused = cli(server, "token", "create", "--write", "elsewhere", token=minter)
    assert refused.returncode != 0 and "forbidden" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    listed = cli(server, "token", "list", "--json", token=minter)
    rows = json.loads(listed.stdout)
    assert [row["name"] for row in rows] == ["scheduler", ""]
    assert rows[0]["rights"] == ["mint"] and rows[0]["quota_bytes"] == 1024**2
    text = cli(server, "token", "list", token=minter).stdout
    assert "scheduler" in text and "rights: mint" in text and minter not in text

    revoked = cli(server, "token", "revoke", str(job["id"]), token=minter)
    assert revoked.returncode == 0, revoked.stderr
    status, _ = await call(http, server, "GET", "/v1/token", job["token"])
    assert status == 401
    # With --data-dir the same commands work on the data directory, as they always did.
    local = server.run_cli("token", "list", "--json")
    assert any(row["id"] == job["id"] and row["revoked_at"] for row in json.loads(local.stdout))
    made = server.run_cli(
        "token", "create", "--read", "cli-http", "--mint", "--expires-in", "1h", "--json"
    )
    assert made.returncode == 0, made.stderr
    reader = json.loads(made.stdout)
    assert (reader["write_prefixes"], reader["read_prefixes"]) == ([], ["cli-http"])
    assert reader["rights"] == ["mint"] and reader["expires_at"] is not None
    assert (await own_token(http, server, reader["token"]))["id"] == reader["id"]
    nothing = server.run_cli("token", "create")
    assert nothing.returncode != 0 and "--write" in nothing.stderr
