"""The ``casd`` command line: the server, administrative commands, and the client commands."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from casd import cli_client
from casd.config import Settings, load_settings
from casd.errors import CasdError

F = TypeVar("F", bound=Callable[..., Any])


class CasdGroup(click.Group):
    """Turns every casd error into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CasdError as error:
            raise click.ClickException(f"{error.code}: {error.detail}") from error
        except (ValueError, OSError) as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=CasdGroup)
@click.version_option(package_name="casd")
def main() -> None:
    """casd: a content-addressed asset store for CI and test infrastructure."""


def server_options(command: F) -> F:
    """--data-dir and --database-url, shared by the server and the administrative commands."""
    command = click.option(
        "--database-url",
        help="PostgreSQL URL (env CASD_DATABASE_URL); default: embedded in the data directory.",
    )(command)
    command = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Data directory (env CASD_DATA_DIR); default ~/.local/share/casd.",
    )(command)
    return command


def settings_from(**overrides: Any) -> Settings:
    try:
        return load_settings(overrides)
    except ValueError as error:
        raise click.UsageError(str(error)) from error


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def with_database(settings: Settings, work: Callable[[str], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(database_url)`` against the server's database (embedded or not)."""
    from casd.server import database_url_for

    with database_url_for(settings) as url:
        return run_async(work(url))


@main.command()
@server_options
@click.option("--listen", help="HOST:PORT to serve on (env CASD_LISTEN, default 127.0.0.1:8480).")
@click.option("--workers", type=click.IntRange(min=1), help="Processes sharing the port.")
@click.option("--private", is_flag=True, default=None, help="Reads need a token too.")
def serve(**options: Any) -> None:
    """Serve the HTTP API."""
    from casd.server import serve as run_server

    run_server(settings_from(**options))


@main.command()
@server_options
def migrate(**options: Any) -> None:
    """Apply pending schema migrations."""
    from casd.database import migrate as apply_migrations

    applied = with_database(settings_from(**options), apply_migrations)
    click.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


@main.group()
def token() -> None:
    """Create, list and revoke bearer tokens."""


def with_tokens(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    from casd.auth import TokenStore
    from casd.database import Database, migrate

    async def run(url: str) -> Any:
        await migrate(url)
        db = await Database.connect(url, max_size=2)
        try:
            return await work(TokenStore(db))
        finally:
            await db.close()

    return with_database(settings, run)


@token.command("create")
@server_options
@click.option(
    "--write", "prefixes", multiple=True, required=True, help="A write prefix ('' = all)."
)
@click.option("--name", "label", default="", help="A label for lists and history.")
def token_create(prefixes: tuple[str, ...], label: str, **options: Any) -> None:
    """Create a token; its secret is printed once."""
    _, secret = with_tokens(settings_from(**options), lambda store: store.create(prefixes, label))
    click.echo(secret)


@token.command("list")
@server_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def token_list(as_json: bool, **options: Any) -> None:
    """List tokens (never their secrets)."""
    tokens = with_tokens(settings_from(**options), lambda store: store.list())
    rows = [
        {
            "id": token.id,
            "name": token.label,
            "write": list(token.write_prefixes),
            "created_at": token.created_at.isoformat() if token.created_at else None,
            "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        }
        for token in tokens
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        prefixes = ", ".join(repr(prefix) for prefix in row["write"])
        click.echo(f"{row['id']}\t{state}\t{row['name']}\twrite: {prefixes}")


@token.command("revoke")
@server_options
@click.argument("token_id", type=int)
def token_revoke(token_id: int, **options: Any) -> None:
    """Revoke a token by id."""
    if not with_tokens(settings_from(**options), lambda store: store.revoke(token_id)):
        raise click.ClickException(f"no active token with id {token_id}")
    click.echo(f"revoked token {token_id}", err=True)


# --- client commands: put, get, resolve, tag, history (casd/cli_client.py) ---

cli_client.register(main)


def fail(message: str) -> None:
    click.echo(f"casd: {message}", err=True)
    sys.exit(1)
