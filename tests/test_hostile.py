"""Hostile bodies and headers: every refusal is problem+json with a code, changes nothing and
never hangs (issue 9, defect 6)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.conftest import AnyServer
from tests.helpers import blob_path, digest_of, problem_of
from tests.inprocess import InProcessServer
from tests.upload_helpers import upload_rows


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), self
        body: dict[str, Any] = json.loads(self.body)
        assert body["status"] == self.status and body["code"], body
        return body


async def raw_request(server: AnyServer, data: bytes, seconds: float = 10.0) -> RawAnswer:
    """Send ``data`` as it is on a fresh connection; the first answer (the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(size), seconds)
        return RawAnswer(int(lines[0].split()[1]), headers, body)
    finally:
        writer.transport.abort()


def request_bytes(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def test_encoded_bodies_are_refused_before_reading(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(200_000)
    # 65 KB of gzip on the wire that would inflate to 64 MiB.
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    bodies = {"gzip": gzip.compress(data), "deflate": zlib.compress(data), "br": b"not brotli"}
    bodies["gzip, identity"] = bomb
    auth = module_http_server.admin_headers
    for coding, body in bodies.items():
        headers = auth | {"Content-Encoding": coding}
        targets = [
            ("PUT", f"/v1/blobs/{digest_of(data)}"),
            ("POST", "/v1/blobs"),
            ("POST", "/v1/uploads"),
            ("PUT", "/v1/names/hostile/encoded"),
        ]
        for method, path in targets:
            url = module_http_server.url + path
            extra = {"If-None-Match": "*"} if "names" in path else {}
            async with http.request(method, url, data=body, headers=headers | extra) as response:
                assert response.status == 415, (coding, method, path)
                problem = await problem_of(response)
                assert problem["code"] == "unsupported-content-encoding"
                assert response.headers["Accept-Encoding"] == "identity"
    assert not blob_path(module_http_server.data_dir, digest_of(data)).exists()
    assert digest_of(bytes(64 * 1024 * 1024)) not in str(
        list(module_http_server.data_dir.rglob("*"))
    )
    assert await upload_rows(module_http_server) == {}
    # identity is what casd stores anyway.
    async with http.put(
        f"{module_http_server.url}/v1/blobs/{digest_of(data)}",
        data=data,
        headers=auth | {"Content-Encoding": "identity"},
    ) as response:
        assert response.status == 201


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="long-line"),
        pytest.param(request_bytes("GET", "/healthz", {"X-Big": "b" * 9000}), id="long-header"),
        pytest.param(
            request_bytes("GET", "/healthz", {f"X-H{n}": "v" * 100 for n in range(400)}),
            id="many-headers",
        ),
        pytest.param(request_bytes("GET", "/healthz", {"X-Nul": "a\x00b"}), id="nul-header"),
        pytest.param(request_bytes("GET", "/healthz", {"X-Ctl": "a\x01\x7fb"}), id="ctl-header"),
        pytest.param(b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n", id="nul-path"),
        pytest.param(request_bytes("PUT", "/v1/blobs", {"Content-Length": "abc"}), id="cl-abc"),
        pytest.param(request_bytes("POST", "/v1/blobs", {"Content-Length": "-1"}), id="cl-neg"),
        pytest.param(
            b"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2"
            b"\r\n\r\nab",
            id="cl-twice",
        ),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-hello"),
    ],
)
async def test_malformed_requests_get_problem_json(
    module_http_server: InProcessServer, raw: bytes
) -> None:
    answer = await raw_request(module_http_server, raw)
    assert 400 <= answer.status < 500, answer
    assert answer.problem()["code"] == "invalid-request"


@pytest.mark.parametrize("path", ["/healthz", "/v1/names/x", "/v1/no/such/route", "/v1/uploads"])
async def test_unknown_expectations_on_every_route(
    module_http_server: InProcessServer, path: str
) -> None:
    for method in ("GET", "POST"):
        answer = await raw_request(
            module_http_server,
            request_bytes(
                method,
                path,
                {
                    "Expect": "200-ok",
                    "Content-Length": "0",
                    "Authorization": f"Bearer {module_http_server.admin_token}",
                },
            ),
        )
        assert answer.status == 417, (method, path, answer)
        assert answer.problem()["code"] == "invalid-request"


async def test_names_with_control_characters_are_invalid(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    auth = module_http_server.admin_headers | {"If-None-Match": "*"}
    for name in ("a%0Ab", "a%0D%0Ab", "x/%0A", "%0A", "a%00b", "a%09b"):
        for method, path in [
            ("GET", f"/v1/names/{name}"),
            ("PUT", f"/v1/names/{name}"),
            ("DELETE", f"/v1/names/{name}"),
            ("GET", f"/v1/history/{name}"),
            ("GET", f"/v1/policies/{name}"),
            ("PUT", f"/v1/policies/{name}"),
            ("DELETE", f"/v1/policies/{name}"),
        ]:
            url = URL(module_http_server.url + path, encoded=True)
            body = {"digest": "x"} if "/names/" in path else {"protected": True}
            async with http.request(method, url, json=body, headers=auth) as response:
                assert response.status == 400, (method, path)
                assert (await problem_of(response))["code"] == "invalid-name"


async def test_failed_or_interrupted_upload_creation_leaves_no_upload(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    head = (
        f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Length: 1000000\r\n\r\n"
    ).encode()
    for _ in range(3):  # the client goes away after part of the body
        _reader, writer = await asyncio.open_connection("127.0.0.1", module_http_server.port)
        writer.write(head + os.urandom(300_000))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.transport.abort()
    # A body that does not hash to the digest announced.
    async with http.post(
        f"{module_http_server.url}/v1/uploads",
        data=b"abc",
        headers=module_http_server.admin_headers
        | {"Upload-Complete": "?1", "Casd-Digest": digest_of(b"xyz")},
    ) as response:
        assert (await problem_of(response))["code"] == "digest-mismatch"
    for _ in range(100):
        rows = await upload_rows(module_http_server)
        staged = list((module_http_server.data_dir / "uploads").iterdir())
        if not rows and not staged:
            break
        await asyncio.sleep(0.1)
    assert rows == {} and staged == []
