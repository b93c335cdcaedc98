"""Transfers that survive the client: ``casd put`` and ``casd get`` killed with SIGKILL half-way
and run again send or fetch only the rest; a forbidden ``put --name`` sends nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_helpers import failed, grows_past, ok, run, run_async, start
from tests.conftest import AnyServer, CasdServer
from tests.helpers import digest_of
from tests.inprocess import InProcessServer
from tests.upload_helpers import CuttingProxy, MiB, bearer, call, log_entries

# The casd commands run as real processes; the server may run in this process.
pytestmark = pytest.mark.e2e

SIZE = 32 * MiB
RATE = "8M"  # bytes a second while the command is to be killed: about 4 s for SIZE


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def staged_upload(server: AnyServer) -> Path | None:
    """The segment being written of the one upload in flight on the server."""
    uploads = list((server.data_dir / "uploads").iterdir())
    segments = list(uploads[0].iterdir()) if len(uploads) == 1 else []
    return max(segments, key=lambda path: path.stat().st_mtime) if segments else None


def journal_files(state: Path) -> list[Path]:
    return sorted((state / "casd" / "uploads").glob("*.json"))


async def uploads_of(
    http: aiohttp.ClientSession, server: AnyServer, token: str
) -> list[dict[str, Any]]:
    answer = await call(http, "GET", f"{server.url}/v1/uploads", headers=bearer(token))
    assert answer.status == 200, answer.body
    listed: list[dict[str, Any]] = answer.body["uploads"]
    return listed


async def test_put_killed_half_way_resumes_with_the_rest(
    http_server: InProcessServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(SIZE)
    source = write(tmp_path / "disk.qcow2", data)
    async with CuttingProxy(http_server.port, []) as proxy:  # counts what reaches the server
        url = ["--url", proxy.url]
        state = {"XDG_STATE_HOME": str(tmp_path / "state")}
        first = await start(
            http_server, "put", str(source), *url, "--limit-rate", RATE, "-q", **state
        )
        staged = await grows_past(lambda: staged_upload(http_server), 8 * MiB, first)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert staged < SIZE, "killed half-way"
        assert len(journal_files(tmp_path / "state")) == 1, (
            "the upload was recorded in the state directory"
        )

        # The server keeps what arrived and lists the upload, with its offset, to its owner
        # only (once it has noticed the connection is gone and recorded what came).
        listed = await uploads_of(http, http_server, http_server.admin_token)
        for _ in range(200):
            if listed and listed[0]["offset"]:
                break
            await asyncio.sleep(0.05)
            listed = await uploads_of(http, http_server, http_server.admin_token)
        assert [upload["length"] for upload in listed] == [SIZE]
        offset = listed[0]["offset"]
        assert 8 * MiB <= offset < SIZE
        assert listed[0]["digest"] == digest_of(data)
        assert listed[0]["age"] >= 0
        other = http_server.run_cli("token", "create", "--write", "others").stdout.strip()
        assert await uploads_of(http, http_server, other) == [], "another token sees none of it"

        before = proxy.forwarded
        again = await run_async(http_server, "put", str(source), *url, "--json", **state)
        sent = proxy.forwarded - before
    result = json.loads(ok(again))
    assert (result["digest"], result["size"]) == (digest_of(data), SIZE)
    rest = SIZE - offset
    assert rest <= sent < rest + 64 * 1024, (sent, rest)
    assert await uploads_of(http, http_server, http_server.admin_token) == []
    assert journal_files(tmp_path / "state") == [], "a finished upload is forgotten"


async def test_get_killed_half_way_fetches_only_the_rest(
    server: CasdServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(SIZE)
    digest = digest_of(data)
    async with http.put(
        f"{server.url}/v1/blobs/{digest}", data=data, headers=server.admin_headers
    ) as response:
        assert response.status == 201
    target = tmp_path / "copy.qcow2"
    partial = tmp_path / f".copy.qcow2.{digest[7:23]}.casd-part"
    first = await start(server, "get", digest, "-o", str(target), "--limit-rate", RATE)
    await grows_past(lambda: partial, 8 * MiB, first)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    kept = partial.stat().st_size
    assert 8 * MiB <= kept < SIZE
    assert not target.exists(), "nothing at the target before it is verified"

    assert ok(run(server, "get", digest, "-o", str(target))) == digest
    assert target.read_bytes() == data
    assert not partial.exists()
    gets = [
        line
        for line in access_lines(server)
        if (line["method"], line["path"]) == ("GET", f"/v1/blobs/{digest}")
    ]
    ranged = [line for line in gets if line["status"] == 206]
    assert len(gets) == 2 and len(ranged) == 1, "the second run asked for a range"
    last = ranged[0]
    assert SIZE - kept <= last["bytes_sent"] < SIZE - kept + 4096, (last, kept)


def access_lines(server: CasdServer) -> list[dict[str, Any]]:
    return [entry for entry in log_entries(server.log()) if entry["logger"] == "casd.access"]


async def test_forbidden_put_with_a_name_sends_no_byte(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    token = module_http_server.run_cli("token", "create", "--write", "team-a").stdout.strip()
    source = write(tmp_path / "big.img", os.urandom(16 * MiB))
    async with CuttingProxy(module_http_server.port, []) as proxy:
        result = await run_async(
            module_http_server,
            "put",
            str(source),
            "--name",
            "team-b/big.img",
            "--url",
            proxy.url,
            token=token,
        )
        sent = proxy.forwarded
    message = failed(result, 5, "forbidden")
    assert "team-b/big.img" in message and "'team-a'" in message
    assert sent < 4096, f"{sent} bytes went out before the refusal"


async def test_concurrent_gets_to_one_file_each_write_it_whole(
    module_http_server: InProcessServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Four jobs fetch the same blob to the same path at once: none shares another's partial
    file, all succeed, and the file is the blob."""
    data = os.urandom(4 * MiB)
    digest = digest_of(data)
    async with http.put(
        f"{module_http_server.url}/v1/blobs/{digest}",
        data=data,
        headers=module_http_server.admin_headers,
    ) as response:
        assert response.status in (200, 201)
    target = tmp_path / "shared.img"
    results = await asyncio.gather(
        *(
            run_async(module_http_server, "get", digest, "-o", str(target), "--limit-rate", "8M")
            for _ in range(4)
        )
    )
    assert [ok(result) for result in results] == [digest] * 4
    assert target.read_bytes() == data
    assert names_in(tmp_path) == ["shared.img"], "no partial file is left"


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())
