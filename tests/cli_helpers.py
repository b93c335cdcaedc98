"""Running ``casd`` client commands in subprocesses, as a user's shell or a CI job would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import AnyServer


def cli_env(
    server: AnyServer | None, token: str | None = None, **extra: str | None
) -> dict[str, str]:
    """The environment of a client command: CASD_URL and CASD_TOKEN of ``server``, then
    ``extra`` (a None value removes a variable)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASD_")}
    if server is not None:
        env |= {"CASD_URL": server.url, "CASD_TOKEN": token or server.admin_token}
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(
    server: AnyServer | None,
    *args: str,
    token: str | None = None,
    input: bytes | None = None,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """``casd ARGS``; stdout and stderr as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "casd", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=cli_env(server, token, **(env or {})),
        timeout=timeout,
        check=False,
    )


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode().strip()


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return text(result)


def failed(result: subprocess.CompletedProcess[bytes], status: int, code: str = "") -> str:
    """The one-line message of a command that failed with exit status ``status``."""
    message = result.stderr.decode().strip()
    assert result.returncode == status, (result.returncode, message)
    assert code in message, message
    return message


async def start(
    server: AnyServer | None, *args: str, token: str | None = None, **env: str | None
) -> asyncio.subprocess.Process:
    """``casd ARGS`` started in the background (to be killed half-way)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "casd",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(server, token, **env),
    )


async def grows_past(path_of: Any, size: int, process: asyncio.subprocess.Process) -> int:
    """Wait until the file ``path_of()`` names holds at least ``size`` bytes; its size."""
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        assert process.returncode is None, "the command ended before it was killed"
        found = size_of(path_of())
        if found >= size:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("the transfer did not get going")


def size_of(path: Path | None) -> int:
    """The size of a file, -1 if there is none."""
    return path.stat().st_size if path is not None and path.exists() else -1


async def run_async(
    server: AnyServer | None, *args: str, token: str | None = None, **env: str | None
) -> subprocess.CompletedProcess[bytes]:
    """``casd ARGS`` without blocking the test's event loop (which may run a proxy)."""
    process = await start(server, *args, token=token, **env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, stdout, stderr)
