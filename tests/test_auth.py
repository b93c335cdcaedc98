"""Tokens: the CLI, scopes at segment boundaries, bad and revoked tokens, private servers,
the admin token of a first start, and secrets that never reach a log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from typing import Any

import aiohttp

from casd.auth import TokenStore
from casd.database import Database
from casd.redact import redact
from tests.conftest import AnyServer, CasdServer, HttpServerFactory, ServerFactory
from tests.helpers import digest_of, problem_of, random_bytes
from tests.inprocess import InProcessServer
from tests.name_helpers import (
    bearer,
    create_only,
    get_name,
    if_match,
    new_token,
    put_name,
    upload,
)


def token_rows(server: AnyServer) -> list[dict[str, Any]]:
    run = server.run_cli("token", "list", "--json")
    assert run.returncode == 0, run.stderr
    rows: list[dict[str, Any]] = json.loads(run.stdout)
    return rows


async def test_token_create_list_revoke(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    run = server.run_cli(
        "token", "create", "--write", "investigate/7/", "--write", "scratch", "--name", "bisect 7"
    )
    assert run.returncode == 0, run.stderr
    secret = run.stdout.strip()
    assert run.stdout == secret + "\n" and secret.startswith("casd_") and len(secret) > 40

    listing = server.run_cli("token", "list")
    rows = token_rows(server)
    entry = next(row for row in rows if row["name"] == "bisect 7")
    assert (entry["write"], entry["revoked_at"]) == (["investigate/7", "scratch"], None)
    assert f"{entry['id']}\tactive\tbisect 7\twrite: 'investigate/7', 'scratch'" in listing.stdout
    connection = await server.connect_db()
    try:
        stored = await connection.fetchrow("SELECT * FROM tokens WHERE id = $1", entry["id"])
    finally:
        await connection.close()
    # Only the hash is kept; no column holds the secret.
    assert stored is not None
    assert stored["secret_hash"] == hashlib.sha256(secret.encode()).digest()
    assert all(secret not in str(value) for value in stored.values())
    assert secret not in listing.stdout + json.dumps(rows)

    digest = await upload(http, server, secret, random_bytes(100))
    status, record, _ = await put_name(
        http, server, secret, "scratch/x", {"digest": digest}, create_only()
    )
    assert (status, record["updated_by"]) == (201, f"token:{entry['id']} (bisect 7)")

    revoked = server.run_cli("token", "revoke", str(entry["id"]))
    assert revoked.returncode == 0, revoked.stderr
    status, problem, _ = await put_name(
        http, server, secret, "scratch/x", {"digest": digest}, if_match(1)
    )
    assert (status, problem["code"]) == (401, "unauthorized")
    async with http.post(
        f"{server.url}/v1/blobs", data=b"more", headers=bearer(secret)
    ) as response:
        assert response.status == 401
    entry = next(row for row in token_rows(server) if row["id"] == entry["id"])
    assert entry["revoked_at"] is not None

    for token_id in (str(entry["id"]), "999999"):
        again = server.run_cli("token", "revoke", token_id)
        assert again.returncode != 0
        assert len(again.stderr.strip().splitlines()) == 1


async def test_token_create_refuses_prefixes_that_are_not_names(
    module_http_server: InProcessServer,
) -> None:
    for prefix in ("prod/*", "a//b", "../prod", "/", "investigate/1 ", "prod/.."):
        run = module_http_server.run_cli("token", "create", "--write", prefix)
        assert run.returncode != 0, prefix
        assert "invalid-name" in run.stderr and run.stdout == ""


async def test_write_scopes_end_at_segment_boundaries(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    one, several, trailing = await asyncio.gather(
        new_token(server, "investigate/1"),
        new_token(server, "tools", "builds/sle"),
        new_token(server, "investigate/3/"),
    )
    digest = await upload(http, server, one, random_bytes(64))
    cases = [
        (one, "investigate/1", True),
        (one, "investigate/1/x.qcow2", True),
        (one, "investigate/1/deep/er/x.qcow2", True),
        (one, "investigate/11/x.qcow2", False),
        (one, "investigate/1x", False),
        (one, "investigate/10", False),
        (one, "investigate", False),
        (one, "investigate/2/x.qcow2", False),
        (one, "Investigate/1/x.qcow2", False),
        (one, "prod/investigate/1/x.qcow2", False),
        (several, "tools/x", True),
        (several, "builds/sle/x", True),
        (several, "builds/sles/x", False),
        (several, "builds/x", False),
        (several, "toolsx", False),
        (trailing, "investigate/3/x", True),
        (trailing, "investigate/33/x", False),
        (server.admin_token, "anything/at/all", True),
    ]
    for token, name, allowed in cases:
        status, body, _ = await put_name(
            http, server, token, name, {"digest": digest}, create_only()
        )
        if allowed:
            assert status == 201, (name, body)
            async with http.delete(
                f"{server.url}/v1/names/{name}", headers={**bearer(token), **if_match(1)}
            ) as response:
                assert response.status == 204
        else:
            assert (status, body["code"]) == (403, "forbidden"), name
            assert (await get_name(http, server, name))[0] == 404


BAD_AUTHORIZATIONS = [
    None,
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Token casd_whatever",
    "Bearer casd_a casd_b",
    "Bearer casd_notatokenatall",
]


async def test_missing_malformed_unknown_and_revoked_tokens(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    valid = await new_token(server, "auth")
    digest = await upload(http, server, valid, b"auth test")
    status, created, _ = await put_name(
        http, server, valid, "auth/x", {"digest": digest}, create_only()
    )
    assert status == 201
    revoked = await new_token(server, "auth")
    newest = max(row["id"] for row in token_rows(server))
    assert server.run_cli("token", "revoke", str(newest)).returncode == 0
    mangled = valid[:-1] + ("A" if valid[-1] != "A" else "B")

    authorizations = [
        *BAD_AUTHORIZATIONS,
        f"Bearer {revoked}",
        f"Bearer {mangled}",
        f"Bearer {valid}x",
    ]
    for authorization in authorizations:
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, url, extra in (
            ("PUT", "/v1/names/auth/x", if_match(1)),
            ("DELETE", "/v1/names/auth/x", if_match(1)),
            ("PUT", f"/v1/blobs/{digest_of(b'x')}", {}),
            ("POST", "/v1/blobs", {}),
        ):
            body = json.dumps({"digest": digest}).encode() if "names" in url else b"x"
            async with http.request(
                method, f"{server.url}{url}", data=body, headers={**headers, **extra}
            ) as response:
                problem = await problem_of(response)
                assert (response.status, problem["code"]) == (401, "unauthorized"), authorization
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await get_name(http, server, "auth/x") == (200, created)
    # The scheme is case-insensitive (RFC 9110).
    status, record, _ = await put_name(
        http,
        server,
        "",
        "auth/x",
        {"digest": digest},
        {**if_match(1), "Authorization": f"bearer {valid}"},
    )
    assert (status, record["version"]) == (200, 2)


async def test_token_introspection(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    scoped = await new_token(server, "investigate/42", "scratch", label="job 42")
    async with http.get(f"{server.url}/v1/token", headers=bearer(scoped)) as response:
        assert response.status == 200
        record = await response.json()
    assert record["label"] == "job 42"
    assert record["write_prefixes"] == ["investigate/42", "scratch"]
    assert record["admin"] is False
    assert record["id"] == max(row["id"] for row in token_rows(server))
    assert scoped not in json.dumps(record)
    async with http.get(f"{server.url}/v1/token", headers=server.admin_headers) as response:
        admin = await response.json()
    assert (admin["admin"], admin["write_prefixes"]) == (True, [""])
    for headers in ({}, bearer(scoped + "x")):
        async with http.get(f"{server.url}/v1/token", headers=headers) as response:
            assert (response.status, (await problem_of(response))["code"]) == (401, "unauthorized")


async def test_uploads_need_any_write_prefix(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = module_http_server
    scoped = await new_token(server, "somewhere/deep")
    data = random_bytes(1000)
    async with http.put(f"{server.url}/v1/blobs/{digest_of(data)}", data=data) as response:
        assert response.status == 401
    async with http.put(
        f"{server.url}/v1/blobs/{digest_of(data)}", data=data, headers=bearer(scoped)
    ) as response:
        assert response.status == 201
    async with http.post(
        f"{server.url}/v1/blobs", data=data + b"!", headers=bearer(scoped)
    ) as response:
        assert response.status == 201

    # A token without any write prefix (the CLI always gives one) may read but not upload.
    db = await Database.connect(server.database_url or "", max_size=1)
    try:
        _, reader = await TokenStore(db).create([], label="reader")
    finally:
        await db.close()
    async with http.post(
        f"{server.url}/v1/blobs", data=b"nope", headers=bearer(reader)
    ) as response:
        assert (response.status, (await problem_of(response))["code"]) == (403, "forbidden")


async def test_reads_are_anonymous_unless_private(
    module_http_server: InProcessServer,
    http_server_factory: HttpServerFactory,
    http: aiohttp.ClientSession,
) -> None:
    private = http_server_factory("--private")
    for server in (module_http_server, private):
        digest = await upload(http, server, server.admin_token, b"readable")
        await put_name(
            http, server, server.admin_token, "reads/x", {"digest": digest}, create_only()
        )
        reader = await new_token(server, "unrelated")
        reads = [
            ("GET", "/v1/names/reads/x"),
            ("HEAD", "/v1/names/reads/x"),
            ("GET", "/v1/names?prefix=reads/"),
            ("GET", "/v1/history/reads/x"),
            ("GET", f"/v1/blobs/{digest}"),
            ("HEAD", f"/v1/blobs/{digest}"),
        ]
        for method, path in reads:
            expected = 401 if server is private else 200
            async with http.request(method, f"{server.url}{path}") as response:
                assert response.status == expected, (method, path)
            async with http.request(
                method, f"{server.url}{path}", headers=bearer(reader)
            ) as response:
                assert response.status == 200, (method, path)
            if server is private:
                async with http.request(
                    method, f"{server.url}{path}", headers=bearer("casd_unknown")
                ) as response:
                    assert response.status == 401


async def test_first_start_writes_the_admin_token(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory()
    path = server.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = server.admin_token
    rows = token_rows(server)
    assert [(row["name"], row["write"]) for row in rows] == [("admin", [""])]
    digest = await upload(http, server, secret, b"admin")
    status, _, _ = await put_name(
        http, server, secret, "any/where/at/all", {"digest": digest}, create_only()
    )
    assert status == 201

    server.restart()
    assert path.read_text() == secret + "\n"
    assert len(token_rows(server)) == 1
    assert secret not in server.log()


async def raw_request(server: CasdServer, head: bytes) -> bytes:
    """Send bytes no well-behaved client would send; return the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0].split(b" ")[1]


async def test_tokens_never_reach_the_log(
    module_server: CasdServer, http: aiohttp.ClientSession
) -> None:
    server = module_server
    scoped, doomed = await asyncio.gather(new_token(server, "logged"), new_token(server, "logged"))
    digest = await upload(http, server, scoped, b"log test")
    await put_name(http, server, scoped, "logged/x", {"digest": digest}, create_only())
    await put_name(http, server, scoped, "elsewhere/x", {"digest": digest}, create_only())  # 403
    await put_name(http, server, scoped, "logged/x", b"{not json", if_match(1))  # 400
    doomed_id = max(row["id"] for row in token_rows(server))
    assert server.run_cli("token", "revoke", str(doomed_id)).returncode == 0
    await put_name(http, server, doomed, "logged/x", {"digest": digest}, if_match(1))  # 401
    for authorization in (f"Bearer {scoped} extra", f"Basic {scoped}", f"Bearer {scoped}x"):
        async with http.put(
            f"{server.url}/v1/names/logged/x", json={}, headers={"Authorization": authorization}
        ) as response:
            assert response.status == 401
    # Headers the HTTP parser itself refuses, with a secret inside.
    for junk in (b"\x01", b"\x7f", b"\r"):
        status = await raw_request(
            server,
            b"PUT /v1/names/logged/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + scoped.encode()
            + junk
            + b"\r\nContent-Length: 0\r\n\r\n",
        )
        assert status.startswith(b"4")
    status = await raw_request(
        server,
        b"GET /v1/names/logged/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + scoped.encode()
        + b"A" * 70000
        + b"\r\n\r\n",
    )
    assert status.startswith(b"4")

    await asyncio.sleep(0.5)  # the access log is written after the answer
    log = server.log()
    assert '"status": 403' in log and '"status": 401' in log  # the requests were logged ...
    for secret in (scoped, doomed, server.admin_token):
        assert secret not in log  # ... but never a token
        assert secret[5:25] not in log


def test_redact_blanks_every_form_of_a_secret() -> None:
    secret = "casd_" + "x1_-Y" * 9
    for text in (
        f"Authorization: Bearer {secret}",
        f"b'authorization: basic dXNlcjpwYXNz{secret}\\x01'",
        f"got more than 8190 bytes: b'Bearer {secret}AAAA'",
        f"token was {secret}.",
    ):
        cleaned = redact(text)
        assert (
            secret not in cleaned and "x1_-Yx1_-Y" not in cleaned and "dXNlcjpwYXNz" not in cleaned
        )
        assert "[redacted]" in cleaned
    assert redact("GET /v1/names/prod/x 200") == "GET /v1/names/prod/x 200"
