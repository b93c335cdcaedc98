"""The client's configuration: ``casd login``, named servers in config.toml, token files, and
flags and CASD_* variables winning over the file."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from casd.exit_codes import Exit
from tests.cli_helpers import failed, ok, run
from tests.conftest import free_port
from tests.inprocess import InProcessServer

# The casd commands run as real processes; the server may run in this process.
pytestmark = pytest.mark.e2e


def test_login_then_commands_use_the_configured_server(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    home = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    casd_dir = tmp_path / "config" / "casd"
    url = module_http_server.url
    token = module_http_server.run_cli("token", "create", "--write", "cfg").stdout.strip()

    refused = run(None, "login", "--server", "farm", "--url", url, input=b"casd_bad\n", env=home)
    failed(refused, Exit.DENIED, "unauthorized")
    assert not casd_dir.exists(), "a token the server refuses is not kept"

    ok(run(None, "login", "--server", "farm", "--url", url, input=token.encode(), env=home))
    stored = casd_dir / "tokens" / "farm"
    assert stored.read_text().strip() == token
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    config = tomllib.loads((casd_dir / "config.toml").read_text())
    assert config == {"default": "farm", "servers": {"farm": {"url": url}}}

    # No CASD_URL, no CASD_TOKEN: the default server of the file, with its token.
    source = tmp_path / "f.bin"
    source.write_bytes(b"configured")
    digest = ok(run(None, "put", str(source), "--name", "cfg/f.bin", env=home))
    assert ok(run(None, "resolve", "cfg/f.bin", env=home)) == digest

    # Flags and CASD_* variables win over the file.
    nobody = f"http://127.0.0.1:{free_port()}"
    failed(run(None, "resolve", "cfg/f.bin", "--url", nobody, "--retries", "0", env=home), 7)
    env_url = home | {"CASD_URL": nobody}
    failed(run(None, "resolve", "cfg/f.bin", "--retries", "0", env=env_url), Exit.UNAVAILABLE)
    bad_token = home | {"CASD_TOKEN": "casd_bad"}
    failed(run(None, "tag", "cfg/g", digest, env=bad_token), Exit.DENIED, "unauthorized")
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(module_http_server.admin_token + "\n")
    # The stored token may only write cfg/; the admin's token from --token-file may write all.
    failed(run(None, "tag", "other/g", digest, env=home), Exit.DENIED, "forbidden")
    ok(run(None, "tag", "other/g", digest, "--token-file", str(admin_file), env=home))
    ok(run(None, "tag", "other/h", digest, env=home | {"CASD_TOKEN_FILE": str(admin_file)}))


def test_named_servers_and_token_files_in_the_config(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(module_http_server.admin_token)
    casd_dir = tmp_path / "config" / "casd"
    casd_dir.mkdir(parents=True)
    (casd_dir / "config.toml").write_text(
        f'default = "nowhere"\n\n[servers.nowhere]\nurl = "http://127.0.0.1:{free_port()}"\n\n'
        f'[servers.local]\nurl = "{module_http_server.url}"\ntoken_file = "{admin_file}"\n'
    )
    home = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    failed(run(None, "ls", "--retries", "0", env=home), Exit.UNAVAILABLE)
    source = tmp_path / "f.bin"
    source.write_bytes(b"named server")
    ok(run(None, "put", str(source), "--name", "anywhere/f", "--server", "local", env=home))
    ok(run(None, "resolve", "anywhere/f", env=home | {"CASD_SERVER": "local"}))
    failed(run(None, "ls", "--server", "missing", env=home), Exit.OTHER, "no server 'missing'")
