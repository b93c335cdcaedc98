"""The client verbs end to end against a real server: stdin and stdout, cat, digest, ls, rm,
rollback, metadata, put --create / --expect-version, uploads, and progress off a terminal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from casd.exit_codes import Exit
from tests.cli_helpers import failed, ok, run, run_async
from tests.conftest import AnyServer
from tests.helpers import digest_of, put_blob
from tests.inprocess import InProcessServer
from tests.upload_helpers import MiB, create_upload

# The casd commands run as real processes; the server may run in this process.
pytestmark = pytest.mark.e2e


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def create_name(
    http: aiohttp.ClientSession, server: AnyServer, name: str, digest: str
) -> None:
    async with http.put(
        f"{server.url}/v1/names/{name}",
        json={"digest": digest},
        headers=server.admin_headers | {"If-None-Match": "*"},
    ) as response:
        assert response.status == 201, await response.text()


def output(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_stdin_stdout_cat_and_digest(module_http_server: InProcessServer, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 5)
    name = "verbs/streamed.bin"
    put = run(module_http_server, "put", "-", "--name", name, "--metadata", "build=7", input=data)
    assert ok(put) == digest_of(data)
    assert output(run(module_http_server, "cat", name)) == data
    assert output(run(module_http_server, "cat", digest_of(data))) == data
    assert output(run(module_http_server, "get", name, "-o", "-")) == data
    assert not Path("-").exists(), "-o - is stdout, not a file named '-'"
    record = json.loads(ok(run(module_http_server, "resolve", name, "--json")))
    assert record["metadata"] == {"build": "7"}

    source = write(tmp_path / "local.img", data)
    assert ok(run(None, "digest", str(source))) == digest_of(data)
    assert ok(run(None, "digest", "-", input=data)) == digest_of(data)
    described = json.loads(ok(run(None, "digest", str(source), "--json")))
    assert described == {"digest": digest_of(data), "size": len(data)}


async def test_ls_rm_and_rollback(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    first, second = digest_of(b"first build"), digest_of(b"second build")
    for data in (b"first build", b"second build"):
        await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    names = [f"verbs/ls/{index:02d}.img" for index in range(5)]
    for name in [*names, "verbs/lsx/outside.img"]:
        await create_name(http, module_http_server, name, first)
    listed = json.loads(ok(await run_async(module_http_server, "ls", "verbs/ls/", "--json")))
    assert [record["name"] for record in listed] == names
    lines = ok(await run_async(module_http_server, "ls", "verbs/ls/", "--limit", "2")).splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[names[0], "1"], [names[1], "1"]]

    name = names[0]
    tagged = await run_async(
        module_http_server, "tag", name, second, "--metadata", "build=2", "--json"
    )
    assert json.loads(ok(tagged))["metadata"] == {"build": "2"}
    back = json.loads(ok(await run_async(module_http_server, "rollback", name, "--json")))
    assert (back["version"], back["digest"], back["metadata"]) == (3, first, {})
    forward = json.loads(
        ok(await run_async(module_http_server, "rollback", name, "--to-version", "2", "--json"))
    )
    assert (forward["version"], forward["digest"]) == (4, second)
    assert forward["metadata"] == {"build": "2"}
    failed(
        await run_async(module_http_server, "rollback", names[1]), Exit.NOT_FOUND, "never pointed"
    )
    failed(
        await run_async(module_http_server, "rollback", name, "--to-version", "9"), Exit.NOT_FOUND
    )

    assert ok(await run_async(module_http_server, "rm", name)) == f"{name} deleted at version 4"
    failed(await run_async(module_http_server, "resolve", name), Exit.NOT_FOUND)
    ok(await run_async(module_http_server, "rm", names[1], "--expect-version", "1"))
    history = json.loads(ok(await run_async(module_http_server, "history", name, "--json")))
    assert [(entry["version"], entry["action"]) for entry in history][:3] == [
        (5, "delete"),
        (4, "update"),
        (3, "update"),
    ]


def test_put_create_and_expect_version(module_http_server: InProcessServer, tmp_path: Path) -> None:
    one, two = write(tmp_path / "1", b"v1"), write(tmp_path / "2", b"v2")
    name = "verbs/cas.img"
    created = json.loads(
        ok(run(module_http_server, "put", str(one), "--name", name, "--create", "--json"))
    )
    assert created["name"]["version"] == 1
    failed(run(module_http_server, "put", str(two), "--name", name, "--expect-version", "3"), 4)
    updated = run(
        module_http_server, "put", str(two), "--name", name, "--expect-version", "1", "--json"
    )
    assert json.loads(ok(updated))["name"]["version"] == 2
    assert "last-writer-wins" in ok(run(None, "put", "--help"))


async def test_uploads_lists_and_cancels(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.run_cli("token", "create", "--write", "verbs-uploads").stdout.strip()
    url = await create_upload(http, module_http_server, token, data=b"y" * 300, Upload_Length="900")
    upload_id = url.rpartition("/")[2]
    listed = json.loads(ok(run(module_http_server, "uploads", "--json", token=token)))
    assert [(item["id"], item["offset"], item["length"]) for item in listed] == [
        (upload_id, 300, 900)
    ]
    assert ok(run(module_http_server, "uploads", token=token)).startswith(f"{upload_id}\t300 B of")
    ok(run(module_http_server, "uploads", "--cancel", upload_id, token=token))
    assert json.loads(ok(run(module_http_server, "uploads", "--json", token=token))) == []


def test_progress_lines_when_stderr_is_not_a_terminal(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    source = write(tmp_path / "big.img", os.urandom(12 * MiB))
    every = {"CASD_PROGRESS_INTERVAL": "0.3"}
    shown = run(module_http_server, "put", str(source), "--limit-rate", "8M", env=every)
    assert ok(shown) == digest_of(source.read_bytes())
    lines = shown.stderr.decode().splitlines()
    assert len(lines) >= 3, lines
    assert all(line.startswith("uploading big.img: ") for line in lines), lines
    assert "MiB of 12.0 MiB" in lines[0] and "/s" in lines[0] and "ETA" in lines[0]
    assert "12.0 MiB of 12.0 MiB (100%)" in lines[-1]

    copy = tmp_path / "copy.img"
    quiet = run(
        module_http_server,
        "get",
        "--quiet",
        "--limit-rate",
        "8M",
        source_digest(source),
        "-o",
        str(copy),
        env=every,
    )
    assert ok(quiet) == source_digest(source)
    assert quiet.stderr == b""


def source_digest(path: Path) -> str:
    return digest_of(path.read_bytes())
