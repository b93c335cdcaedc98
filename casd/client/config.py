"""Which server a client command talks to, and with which token.

``$XDG_CONFIG_HOME/casd/config.toml`` (else ``~/.config/casd/config.toml``) names servers::

    default = "farm"

    [servers.farm]
    url = "https://casd.farm.example"
    token_file = "~/.config/casd/tokens/farm"   # or: token = "casd_..."

``casd login`` stores a token in ``<config>/tokens/<server>`` (mode 0600), which a server
without ``token``/``token_file`` uses. Flags win over ``CASD_*`` variables, which win over
the file: ``--url``, ``CASD_URL``, then the server named by ``--server``/``CASD_SERVER`` or
``default``; ``--token``, ``--token-file``, ``CASD_TOKEN``, ``CASD_TOKEN_FILE``, then the
token of the chosen server (or of the configured server with the URL in use).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The server when none is configured: where ``casd serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8480"
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "casd"


@dataclass(frozen=True)
class ServerEntry:
    name: str
    url: str | None
    token: str | None
    token_file: Path | None


@dataclass(frozen=True)
class ClientConfig:
    path: Path
    default: str | None
    servers: dict[str, ServerEntry]

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        path = path or config_dir() / "config.toml"
        try:
            body = tomllib.loads(path.read_text())
        except FileNotFoundError:
            body = {}
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"cannot read {path}: {error}") from error
        servers = {name: _entry(path, name, table) for name, table in _tables(path, body)}
        default = body.get("default")
        if default is not None and not isinstance(default, str):
            raise ValueError(f"{path}: 'default' must be a server's name")
        return cls(path, default, servers)

    def tokens_dir(self) -> Path:
        return self.path.parent / "tokens"

    def server(self, name: str) -> ServerEntry:
        if name not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ValueError(f"no server {name!r} in {self.path} (configured: {known})")
        return self.servers[name]

    def server_for_url(self, url: str) -> ServerEntry | None:
        for entry in self.servers.values():
            if entry.url and entry.url.rstrip("/") == url.rstrip("/"):
                return entry
        return None

    def token_of(self, entry: ServerEntry) -> str | None:
        if entry.token:
            return entry.token
        stored = entry.token_file or self.tokens_dir() / entry.name
        if entry.token_file is None and not stored.exists():
            return None
        return read_token_file(stored)


def _tables(path: Path, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    servers = body.get("servers", {})
    if not isinstance(servers, dict) or not all(isinstance(t, dict) for t in servers.values()):
        raise ValueError(f"{path}: [servers.NAME] tables expected")
    return list(servers.items())


def _entry(path: Path, name: str, table: dict[str, Any]) -> ServerEntry:
    for key in ("url", "token", "token_file"):
        if key in table and not isinstance(table[key], str):
            raise ValueError(f"{path}: servers.{name}.{key} must be a string")
    token_file = Path(table["token_file"]).expanduser() if "token_file" in table else None
    return ServerEntry(name, table.get("url"), table.get("token"), token_file)


def read_token_file(path: Path) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as error:
        raise ValueError(f"cannot read the token file {path}: {error.strerror}") from error
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None


def connection(
    *,
    url_flag: str | None,
    token_flag: str | None,
    token_file_flag: Path | None,
    server: str | None,
    environ: dict[str, str] | None = None,
) -> Connection:
    """The URL and token of a command, flags first, then ``CASD_*``, then the config file."""
    env = os.environ if environ is None else environ
    config = ClientConfig.load()
    server = server or env.get("CASD_SERVER") or None
    entry = config.server(server) if server else None
    if entry is None and config.default:
        entry = config.servers.get(config.default)
    url = url_flag or env.get("CASD_URL") or (entry.url if entry else None) or DEFAULT_URL
    if url_flag or env.get("CASD_URL"):
        # An explicit URL takes the token of the server configured with it, if any.
        entry = config.server_for_url(url) if not server else entry
    token = token_flag or (read_token_file(token_file_flag) if token_file_flag else None)
    token = token or env.get("CASD_TOKEN") or None
    if token is None and env.get("CASD_TOKEN_FILE"):
        token = read_token_file(Path(env["CASD_TOKEN_FILE"]))
    if token is None and entry is not None:
        token = config.token_of(entry)
    return Connection(url.rstrip("/"), token)


def save_login(server: str, url: str, token: str) -> Path:
    """Keep ``token`` for ``server`` (mode 0600) and add the server to the config file when it
    is not there yet (the first server becomes the default); the token file's path."""
    if not _SERVER_NAME.fullmatch(server):
        raise ValueError(f"a server's name is letters, digits, '-' and '_', not {server!r}")
    config = ClientConfig.load()
    known = config.servers.get(server)
    if known is not None and known.url and known.url.rstrip("/") != url.rstrip("/"):
        raise ValueError(
            f"server {server!r} has url {known.url} in {config.path}; edit it there first"
        )
    target = known.token_file if known and known.token_file else config.tokens_dir() / server
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # also when the file existed with looser rights
        file.write(token + "\n")
    if known is None:
        _add_server(config, server, url)
    return target


def _add_server(config: ClientConfig, server: str, url: str) -> None:
    """Append ``[servers.NAME]``; comments and layout of the file stay as they are."""
    config.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = config.path.read_text() if config.path.exists() else ""
    if config.default is None:
        text = f"default = {json.dumps(server)}\n" + text  # a top-level key goes first
    # A JSON string is a valid TOML basic string.
    text += f"{'' if text.endswith(chr(10)) else chr(10)}\n[servers.{server}]\n"
    text += f"url = {json.dumps(url)}\n"
    config.path.write_text(text)
