"""Each exit status of the client commands, produced by the situation it names, and the
retries that lead to some of them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from casd.exit_codes import Exit
from tests.cli_helpers import failed, ok, run, run_async
from tests.conftest import free_port
from tests.helpers import blob_path, digest_of, put_blob
from tests.inprocess import InProcessServer
from tests.integrity_helpers import flip_byte
from tests.upload_helpers import MiB

# The casd commands run as real processes; the server may run in this process.
pytestmark = pytest.mark.e2e


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_usage_errors(module_http_server: InProcessServer, tmp_path: Path) -> None:
    source = write(tmp_path / "f.bin", b"bytes")
    failed(run(module_http_server, "get", digest_of(b"bytes")), Exit.USAGE, "-o")
    failed(run(module_http_server, "put", str(source), "--create"), Exit.USAGE, "--name")
    failed(run(module_http_server, "resolve", "exit/../x"), Exit.USAGE, "invalid-name")
    failed(run(module_http_server, "get", "blake3:abc", "-o", "x"), Exit.USAGE, "invalid-digest")


def test_not_found(module_http_server: InProcessServer, tmp_path: Path) -> None:
    failed(run(module_http_server, "resolve", "exit/missing"), Exit.NOT_FOUND, "name-not-found")
    missing = digest_of(b"never stored")
    target = tmp_path / "x"
    failed(
        run(module_http_server, "get", missing, "-o", str(target)), Exit.NOT_FOUND, "blob-not-found"
    )
    assert names_in(tmp_path) == [], "no partial file is left for a missing blob"
    failed(run(module_http_server, "tag", "exit/x", missing), Exit.NOT_FOUND, "unknown-blob")
    failed(
        run(module_http_server, "uploads", "--cancel", "abc123"), Exit.NOT_FOUND, "upload-not-found"
    )


def test_conflicts(module_http_server: InProcessServer, tmp_path: Path) -> None:
    one, two = write(tmp_path / "1", b"one"), write(tmp_path / "2", b"two")
    name = "exit/conflict.img"
    ok(run(module_http_server, "put", str(one), "--name", name, "--create"))
    message = failed(
        run(module_http_server, "put", str(two), "--name", name, "--create"), Exit.CONFLICT
    )
    assert "precondition-failed" in message and "version 1" in message
    failed(
        run(module_http_server, "tag", name, digest_of(b"one"), "--expect-version", "5"),
        Exit.CONFLICT,
        "precondition-failed",
    )
    failed(run(module_http_server, "rm", name, "--expect-version", "2"), Exit.CONFLICT, "version 1")
    assert ok(run(module_http_server, "resolve", name)) == digest_of(b"one"), "unchanged"


async def test_of_concurrent_creators_one_wins_and_the_others_see_a_conflict(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    """Six jobs publish different content to one name with --create at once: one exits 0,
    five exit with the conflict status, and the name holds the winner's digest."""
    files = [write(tmp_path / f"build{index}", os.urandom(1000)) for index in range(6)]
    name = "exit/race.img"
    results = await asyncio.gather(
        *(
            run_async(module_http_server, "put", str(file), "--name", name, "--create", "--json")
            for file in files
        )
    )
    codes = sorted(result.returncode for result in results)
    assert codes == [Exit.OK] + [Exit.CONFLICT] * 5, [r.stderr for r in results]
    (winner,) = [index for index, result in enumerate(results) if result.returncode == 0]
    assert ok(run(module_http_server, "resolve", name)) == digest_of(files[winner].read_bytes())


def test_unauthorized_and_forbidden(module_http_server: InProcessServer, tmp_path: Path) -> None:
    source = write(tmp_path / "f.bin", b"denied")
    result = run(module_http_server, "put", str(source), token="casd_not-a-token")
    message = failed(result, Exit.DENIED, "unauthorized")
    assert "try" not in message, "a 401 is not retried"
    scoped = module_http_server.run_cli("token", "create", "--write", "exit-team").stdout.strip()
    digest = ok(run(module_http_server, "put", str(source), token=scoped))
    failed(
        run(module_http_server, "tag", "elsewhere/f", digest, token=scoped),
        Exit.DENIED,
        "forbidden",
    )


async def test_integrity_failure(
    module_http_server: InProcessServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(3 * MiB)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    flip_byte(blob_path(module_http_server.data_dir, digest_of(data)), MiB)
    target = tmp_path / "rotten.img"
    result = await run_async(module_http_server, "get", digest_of(data), "-o", str(target))
    failed(result, Exit.INTEGRITY, "blob-quarantined")
    assert not target.exists()
    assert names_in(tmp_path) == [], "nothing of it is kept"


@pytest.mark.e2e
def test_server_unavailable_after_the_retries(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    result = run(None, "resolve", "exit/x", "--url", nobody, "--retries", "2")
    failed(result, Exit.UNAVAILABLE, "unavailable")
    notes = result.stderr.decode().strip().splitlines()[:-1]
    assert len(notes) == 2 and all("trying again in" in note for note in notes), notes


def test_tls_to_a_plain_port_is_not_retried(module_http_server: InProcessServer) -> None:
    https = module_http_server.url.replace("http://", "https://")
    result = run(module_http_server, "resolve", "exit/x", "--url", https, "--retries", "5")
    message = failed(result, Exit.UNAVAILABLE, "cannot talk to casd")
    assert "trying again" not in result.stderr.decode(), "a TLS failure is final"
    assert "SSL" in message


def test_other_failures(module_http_server: InProcessServer, tmp_path: Path) -> None:
    source = write(tmp_path / "f.bin", b"other")
    digest = ok(run(module_http_server, "put", str(source)))
    result = run(module_http_server, "get", digest, "-o", str(tmp_path / "no-such-dir" / "f"))
    failed(result, Exit.OTHER, "No such file or directory")


@pytest.mark.e2e
async def test_408_and_429_are_retried_with_a_note(tmp_path: Path) -> None:
    """A server that asks to slow down twice, then answers: the command succeeds."""
    answers = [429, 408]

    async def resolve(request: web.Request) -> web.Response:
        if answers:
            return web.Response(status=answers.pop(0), headers={"Retry-After": "0"})
        record = {"name": "n", "digest": digest_of(b"x"), "size": 1, "version": 1}
        record |= {"metadata": {}, "healthy": True, "updated_at": "", "updated_by": ""}
        return web.json_response(record)

    app = web.Application()
    app.router.add_get("/v1/names/{name:.+}", resolve)
    async with TestServer(app, host="127.0.0.1") as server:
        result = await run_async(None, "resolve", "n", "--url", str(server.make_url("")))
    assert ok(result) == digest_of(b"x")
    notes = result.stderr.decode().strip().splitlines()
    assert len(notes) == 2 and "try 1 of 6 failed" in notes[0], notes


@pytest.mark.e2e
async def test_timeout_ends_a_silent_server(tmp_path: Path) -> None:
    """A server that accepts and never answers: --timeout ends each try, and the command
    gives up with the unavailable status instead of hanging."""
    silent = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await silent.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/names/{name:.+}", never)
    async with TestServer(app, host="127.0.0.1") as server:
        started = asyncio.get_running_loop().time()
        result = await run_async(
            None,
            "resolve",
            "n",
            "--url",
            str(server.make_url("")),
            "--timeout",
            "0.5",
            "--retries",
            "1",
        )
        took = asyncio.get_running_loop().time() - started
        silent.set()
    failed(result, Exit.UNAVAILABLE, "unavailable")
    assert "trying again" in result.stderr.decode(), "a timeout is retried"
    assert took < 20, took
