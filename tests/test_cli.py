"""The client commands of the CLI end to end, each in a subprocess against a real server."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AnyServer
from tests.helpers import digest_of
from tests.inprocess import InProcessServer
from tests.upload_helpers import MiB

# The casd commands run as real processes; the server may run in this process.
pytestmark = pytest.mark.e2e


def casd(
    server: AnyServer, *args: str, token: str | None = None, stderr: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """``casd ARGS`` with CASD_URL and CASD_TOKEN set, as a user's shell would have them."""
    env = {**os.environ, "CASD_URL": server.url, "CASD_TOKEN": token or server.admin_token}
    return subprocess.run(
        [sys.executable, "-m", "casd", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def succeeds(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def fails(result: subprocess.CompletedProcess[str], code: str) -> str:
    """The one-line message of a failed command, which names the problem's code."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert code in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def scoped_token(module_http_server: InProcessServer) -> str:
    return succeeds(module_http_server.run_cli("token", "create", "--write", "cli-team"))


def test_put_with_name_resolve_get_tag_history(
    module_http_server: InProcessServer, tmp_path: Path, scoped_token: str
) -> None:
    first, second = os.urandom(3 * MiB), os.urandom(MiB)
    (tmp_path / "v1.qcow2").write_bytes(first)
    (tmp_path / "v2.qcow2").write_bytes(second)
    name = "cli-team/images/disk.qcow2"

    out = succeeds(casd(module_http_server, "put", str(tmp_path / "v1.qcow2"), "--name", name))
    assert out == digest_of(first)
    assert succeeds(casd(module_http_server, "resolve", name)) == digest_of(first)
    assert succeeds(casd(module_http_server, "get", name, "-o", str(tmp_path / "out"))) == (
        digest_of(first)
    )
    assert (tmp_path / "out").read_bytes() == first

    result = casd(
        module_http_server,
        "put",
        str(tmp_path / "v2.qcow2"),
        "--name",
        name,
        "--json",
        token=scoped_token,
    )
    put = json.loads(succeeds(result))
    assert (put["digest"], put["size"], put["name"]["version"]) == (digest_of(second), MiB, 2)

    message = fails(
        casd(module_http_server, "tag", name, digest_of(first), "--expect-version", "1"),
        "precondition-failed",
    )
    assert "version 2" in message, "the error says where the name is now"
    fails(
        casd(module_http_server, "tag", name, digest_of(first), "--create"), "precondition-failed"
    )
    assert succeeds(casd(module_http_server, "resolve", name)) == digest_of(second), "unchanged"

    tagged = json.loads(
        succeeds(
            casd(
                module_http_server, "tag", name, digest_of(first), "--expect-version", "2", "--json"
            )
        )
    )
    assert (tagged["version"], tagged["digest"]) == (3, digest_of(first))
    assert "version 4" in succeeds(casd(module_http_server, "tag", name, digest_of(second)))

    history = json.loads(succeeds(casd(module_http_server, "history", name, "--json")))
    assert [(entry["version"], entry["action"]) for entry in history] == [
        (4, "update"),
        (3, "update"),
        (2, "update"),
        (1, "create"),
    ]
    lines = succeeds(casd(module_http_server, "history", name)).splitlines()
    assert lines[0].split("\t")[:3] == ["4", "update", digest_of(second)]
    assert len(lines) == 4


def test_failures_are_one_line_and_change_nothing(
    module_http_server: InProcessServer, tmp_path: Path, scoped_token: str
) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"some bytes")
    fails(
        casd(
            module_http_server, "put", str(source), "--name", "elsewhere/f.bin", token=scoped_token
        ),
        "forbidden",
    )
    fails(casd(module_http_server, "resolve", "elsewhere/f.bin"), "name-not-found")
    fails(casd(module_http_server, "resolve", "cli-team/../x"), "invalid-name")
    missing = digest_of(b"not stored")
    fails(casd(module_http_server, "get", missing, "-o", str(tmp_path / "x")), "blob-not-found")
    assert not (tmp_path / "x").exists()
    fails(casd(module_http_server, "tag", "cli-team/x", missing, "--create"), "unknown-blob")
    fails(casd(module_http_server, "put", str(source), token="casd_not-a-token"), "unauthorized")
    result = casd(
        module_http_server, "tag", "cli-team/x", missing, "--create", "--expect-version", "1"
    )
    assert result.returncode != 0


def test_token_create_then_use_it(module_http_server: InProcessServer, tmp_path: Path) -> None:
    token = succeeds(module_http_server.run_cli("token", "create", "--write", "cli-new"))
    source = tmp_path / "f.bin"
    source.write_bytes(b"made with a new token")
    assert succeeds(
        casd(module_http_server, "put", str(source), "--name", "cli-new/f", token=token)
    )
    assert succeeds(casd(module_http_server, "resolve", "cli-new/f")) == digest_of(
        source.read_bytes()
    )


def test_progress_bar_only_on_a_terminal(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    source = tmp_path / "big.img"
    source.write_bytes(os.urandom(12 * MiB))
    quiet = casd(module_http_server, "put", str(source))
    assert succeeds(quiet) == digest_of(source.read_bytes())
    assert quiet.stderr == ""

    controller, terminal = pty.openpty()
    try:
        shown = casd(
            module_http_server,
            "get",
            digest_of(source.read_bytes()),
            "-o",
            str(tmp_path / "copy.img"),
            stderr=terminal,
        )
        os.close(terminal)
        terminal = -1
        drawn = read_all(controller)
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert succeeds(shown) == digest_of(source.read_bytes())
    assert "12.0M/12.0M" in drawn and "B/s" in drawn, drawn
    assert "downloading copy.img" in drawn, "the bar says what it shows"


def read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
