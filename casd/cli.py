"""The ``casd`` command line: the server, administrative commands, and the client commands."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from casd import cli_admin, cli_client
from casd.cli_common import byte_size
from casd.config import SETTINGS, SettingError, Settings, load_settings
from casd.errors import CasdError
from casd.exit_codes import HELP as EXIT_HELP
from casd.exit_codes import Exit, exit_code

F = TypeVar("F", bound=Callable[..., Any])

# An administrative command waits this long for PostgreSQL (a scrub's statements may be long).
COMMAND_WAIT_LIMIT = 60.0


class Failure(click.ClickException):
    """A one-line message on stderr and the exit status of :mod:`casd.exit_codes`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


class CasdGroup(click.Group):
    """Turns every casd error into a one-line message and the exit status of its kind."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CasdError as error:
            detail = " ".join(error.detail.split())  # one line, whatever the server said
            raise Failure(f"{error.code}: {detail}", exit_code(error)) from error
        except (ValueError, OSError) as error:
            raise Failure(str(error), Exit.OTHER) from error
        except KeyboardInterrupt:
            raise Failure("interrupted", 130) from None


@click.group(cls=CasdGroup, epilog=EXIT_HELP)
@click.version_option(package_name="casd")
def main() -> None:
    """casd: a content-addressed asset store for CI and test infrastructure.

    Client commands find their server and token in flags, then CASD_URL / CASD_TOKEN /
    CASD_TOKEN_FILE / CASD_SERVER, then ~/.config/casd/config.toml (see casd login).
    """


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


class BadSetting(click.ClickException):
    """A setting that cannot be used: one line naming it, exit status 2 (a usage error)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"casd: {self.message}", err=True)


def settings_from(**overrides: Any) -> Settings:
    try:
        return load_settings(overrides)
    except SettingError as error:
        raise BadSetting(str(error)) from error


def every_setting(command: F) -> F:
    """A flag for every setting (casd.config.SETTINGS), its variable named in its help."""
    for setting in reversed(SETTINGS):
        help_text = f"{setting.help} Env {setting.env}."
        if setting.switch:
            name = setting.flag.removeprefix("--")
            option = click.option(f"--{name}/--no-{name}", default=None, help=help_text)
        else:
            option = click.option(setting.flag, metavar=setting.metavar, help=help_text)
        command = option(command)
    return command


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def with_database(settings: Settings, work: Callable[[str], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(database_url)`` against the server's database (embedded or not)."""
    from casd.server import database_url_for

    with database_url_for(settings) as url:
        return run_async(work(url))


def with_core(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(core)`` on the server's database (migrated first) and data directory."""
    from casd.core import open_core
    from casd.database import migrate

    async def run(url: str) -> Any:
        await migrate(url)
        async with open_core(
            settings, url, pool_size=2, wait_limit=COMMAND_WAIT_LIMIT, listen=False
        ) as core:
            return await work(core)

    return with_database(settings, run)


@main.command()
@every_setting
def serve(**options: Any) -> None:
    """Serve the HTTP API.

    Every flag has an environment variable; a flag wins over its variable. Durations take a
    unit (30s, 15m, 24h, 7d); sizes are bytes or take one (10GB = 10^10, 10GiB = 10 * 2^30).
    """
    settings = settings_from(**options)
    from casd.supervisor import prepare_to_serve

    # Before casd.server imports prometheus_client: its metrics go to files of this server.
    prepare_to_serve(settings)
    from casd.server import serve as run_server

    sys.exit(run_server(settings))


@main.command()
@server_options
def migrate(**options: Any) -> None:
    """Apply pending schema migrations."""
    from casd.database import migrate as apply_migrations

    applied = with_database(settings_from(**options), apply_migrations)
    click.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


@main.group()
def token() -> None:
    """Create, list and revoke bearer tokens.

    Over HTTP with --url (or CASD_URL) and --token (or CASD_TOKEN); on the server's data
    directory and database directly when --data-dir or --database-url is given, or no URL is.
    """


def with_tokens(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(token_store)`` on the server's database."""
    return with_core(settings, lambda core: work(core.tokens))


def local(options: dict[str, Any]) -> bool:
    """Whether a token command works on the data directory rather than over HTTP."""
    url = options.pop("url", None)
    options.pop("token", None)
    return url is None or options.get("data_dir") is not None or bool(options.get("database_url"))


@token.command("create")
@server_options
@cli_admin.http_options
@click.option("--write", "prefixes", multiple=True, help="A write prefix ('' = all: an admin).")
@click.option("--read", "reads", multiple=True, help="Read only these (and the write) prefixes.")
@click.option("--mint", is_flag=True, help="May create tokens within its own scope.")
@click.option("--expires-in", callback=cli_admin.duration, help="Expire after this long (8h).")
@click.option("--quota", callback=byte_size, help="Bytes of new blobs it may store (10GiB).")
@click.option("--name", "label", default="", help="A label for lists and history.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record, secret included.")
def token_create(
    prefixes: tuple[str, ...],
    reads: tuple[str, ...],
    mint: bool,
    expires_in: float | None,
    quota: int | None,
    label: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Create a token; its secret is printed once."""
    from casd.auth import TokenSpec

    spec = TokenSpec(prefixes, label, reads or None, mint, expires_in, quota)
    url, secret = options.get("url"), options.get("token")
    if not (prefixes or reads):
        raise click.UsageError("give at least one --write or --read prefix")
    if local(options):
        created, secret = with_tokens(
            settings_from(**options), lambda store: store.create((), spec=spec)
        )
        record = created.as_dict() | {"token": secret}
    else:
        record = cli_admin.create_token(url, secret, spec)
    click.echo(json.dumps(record, indent=2) if as_json else record["token"])


@token.command("list")
@server_options
@cli_admin.http_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def token_list(as_json: bool, **options: Any) -> None:
    """List tokens (never their secrets)."""
    url, secret = options.get("url"), options.get("token")
    if local(options):
        tokens = with_tokens(settings_from(**options), lambda store: store.list())
        records = [token.as_dict() for token in tokens]
    else:
        records = cli_admin.list_tokens(url, secret)
    rows = [cli_admin.token_row(record) for record in records]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(cli_admin.token_line(row))


@token.command("revoke")
@server_options
@cli_admin.http_options
@click.argument("token_id", type=int)
def token_revoke(token_id: int, **options: Any) -> None:
    """Revoke a token by id (and every token minted under it)."""
    url, secret = options.get("url"), options.get("token")
    if local(options):
        revoked = with_tokens(settings_from(**options), lambda store: store.revoke_all(token_id))
        if token_id not in revoked:
            raise click.ClickException(f"no active token with id {token_id}")
    else:
        revoked = cli_admin.revoke_token(url, secret, token_id)
    click.echo(f"revoked tokens {', '.join(map(str, revoked))}", err=True)


# --- scrub and gc: the integrity of stored blobs (casd/scrub.py, casd/gc.py) ---


def with_blobs(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(blob_service)`` on the server's database and data directory."""
    return with_core(settings, lambda core: work(core.blobs))


@main.command()
@server_options
@click.option(
    "--older-than",
    callback=cli_admin.duration,
    metavar="DURATION",
    help="Re-hash only blobs not verified for this long (7d); check the others are there.",
)
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MB/S",
    help="Read at most this many MB (10^6 bytes) per second.",
)
@click.option("--strict", is_flag=True, help="Exit with status 1 if blobs were found damaged.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scrub(
    older_than: float | None, max_rate: float | None, strict: bool, as_json: bool, **options: Any
) -> None:
    """Re-hash stored blobs, quarantine the corrupt, reconcile files and rows."""
    from casd.scrub import MB, Scrubber

    rate = max_rate * MB if max_rate else None
    report = with_blobs(
        settings_from(**options),
        lambda blobs: Scrubber(blobs, older_than=older_than, max_rate=rate).run(),
    )
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.summary()))
    if strict and report.damaged:
        fail(
            f"scrub found damaged blobs: {report.corrupt} corrupt, {report.missing} missing,"
            f" {report.orphans_quarantined} orphan files that did not match"
        )


@main.command()
@server_options
@click.option(
    "--grace",
    callback=cli_admin.duration,
    metavar="DURATION",
    help="Keep what was uploaded this recently (env CASD_GC_GRACE, 24h).",
)
@click.option(
    "--keep-versions",
    type=click.IntRange(min=0),
    help="Keep the last N digests of every name's history (env CASD_KEEP_VERSIONS, 10).",
)
@click.option("--dry-run", is_flag=True, help="List what would be collected; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gc(
    grace: float | None, keep_versions: int | None, dry_run: bool, as_json: bool, **options: Any
) -> None:
    """Apply the retention policies, then delete blobs that no name keeps and nobody uploaded
    recently (a dry run applies no retention)."""
    from casd.gc import Collector
    from casd.retention import RetentionReport, apply_retention

    settings = settings_from(gc_grace=grace, keep_versions=keep_versions, **options)
    listed: list[dict[str, Any]] = []

    def show(digest: str, size: int) -> None:
        listed.append({"digest": digest, "size": size})
        if dry_run and not as_json:
            click.echo(f"{digest}\t{size}")

    async def collect(blobs: Any) -> tuple[RetentionReport, Any]:
        retention = RetentionReport() if dry_run else await apply_retention(blobs.db)
        policy = Collector(
            blobs,
            keep_versions=settings.keep_versions,
            grace=settings.gc_grace,
            dry_run=dry_run,
            on_blob=show,
        )
        return retention, await policy.run()

    retention, report = with_blobs(settings, collect)
    if as_json:
        extra = {"blobs": listed, "retention": retention.as_dict()}
        click.echo(json.dumps(report.as_dict() | extra, indent=2))
        return
    if retention.deleted:
        click.echo(f"retention deleted {retention.deleted} names")
    click.echo(report.summary())


# --- client commands: put, get, cat, digest, uploads, login (casd/cli_client.py) and
# resolve, tag, history, ls, rm, rollback (casd/cli_names.py) ---

cli_client.register(main)

# --- policies and promotion over HTTP (casd/cli_admin.py) ---

cli_admin.register(main)


def fail(message: str) -> None:
    click.echo(f"casd: {message}", err=True)
    sys.exit(1)
