"""What every client command of the CLI shares: connection and retry options, running a
client, output, ``--metadata``, and the message of a lost compare-and-swap."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from casd.cli_progress import Reporter
from casd.config import parse_size
from casd.exit_codes import HELP as EXIT_HELP

if TYPE_CHECKING:
    from casd.client import Client, NameRecord
    from casd.errors import CasdError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRIES = 5
EPILOG = EXIT_HELP


@dataclass(frozen=True)
class ClientOptions:
    server: str | None
    url: str | None
    token: str | None
    token_file: Path | None
    retries: int
    timeout: float | None
    quiet: bool
    as_json: bool
    limit_rate: int | None = None


_OPTION_NAMES = set(ClientOptions.__dataclass_fields__)


def byte_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback: 512M, 10GiB, 10GB (see casd.config.parse_size) as bytes."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def client_options(*, transfer: bool = False) -> Callable[[F], F]:
    """The options of every client command, handed to it as ``options: ClientOptions``."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            picked = {key: kwargs.pop(key) for key in list(kwargs) if key in _OPTION_NAMES}
            return command(*args, options=ClientOptions(**picked), **kwargs)

        decorators = [
            click.option("--server", metavar="NAME", help="A server of the config file."),
            click.option("--url", help="The casd server (env CASD_URL; default: config file)."),
            click.option("--token", help="Bearer token (env CASD_TOKEN)."),
            click.option(
                "--token-file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Read the bearer token from this file (env CASD_TOKEN_FILE).",
            ),
            click.option(
                "--retries",
                type=click.IntRange(min=0),
                default=DEFAULT_RETRIES,
                show_default=True,
                help="Retries, with backoff, of what may succeed later (not TLS errors, not"
                " 4xx answers but 408 and 429).",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                metavar="SECONDS",
                help="To connect, and to wait for the next byte (default 30 and 300).",
            ),
            click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
            click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
        ]
        if transfer:
            decorators.append(
                click.option(
                    "--limit-rate",
                    callback=byte_size,
                    metavar="BYTES",
                    help="At most this many bytes a second (512k, 20M).",
                )
            )
        decorated: Any = wrapper
        for decorator in reversed(decorators):
            decorated = decorator(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate


def note_retry(failures: int, attempts: int, delay: float, error: CasdError) -> None:
    click.echo(
        f"casd: try {failures} of {attempts} failed ({error.code}: {error.detail});"
        f" trying again in {delay:.1f}s",
        err=True,
    )


def run_client(
    options: ClientOptions, work: Callable[[Client, Reporter], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``work(client, reporter)`` on a fresh event loop, connected as the options say."""
    from casd.client import Client, Retry
    from casd.client.config import connection
    from casd.client.state import UploadJournal

    target = connection(
        url_flag=options.url,
        token_flag=options.token,
        token_file_flag=options.token_file,
        server=options.server,
    )
    reporter = Reporter(options.quiet)

    async def run() -> Any:
        async with Client(
            target.url,
            target.token,
            retry=Retry(attempts=options.retries + 1),
            timeout=options.timeout,
            on_retry=note_retry,
            limit_rate=options.limit_rate,
            journal=UploadJournal(),
        ) as client:
            try:
                return await work(client, reporter)
            finally:
                reporter.close()

    return asyncio.run(run())


def emit(as_json: bool, value: Any, text: str) -> None:
    click.echo(json.dumps(value, indent=2) if as_json else text)


def record_line(record: NameRecord) -> str:
    return f"{record.name} version {record.version}: {record.digest}"


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """``--metadata KEY=VALUE`` (repeatable) as a metadata object; None when none is given."""
    if not pairs:
        return None
    metadata: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[key] = value
    return metadata


def metadata_option(command: F) -> F:
    return click.option(
        "--metadata",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set the name's metadata to these pairs (repeatable); without, it is kept.",
    )(command)


def check_precondition(create: bool, expect_version: int | None) -> None:
    if expect_version is not None and create:
        raise click.UsageError("--expect-version and --create exclude each other")


async def explain_conflict(setting: Coroutine[Any, Any, NameRecord]) -> NameRecord:
    """Say where the name is now when a compare-and-swap fails."""
    from casd.errors import PreconditionFailed

    try:
        return await setting
    except PreconditionFailed as error:
        current = error.extra.get("current")
        if isinstance(current, dict):
            error.detail += f" (it is at version {current.get('version')}: {current.get('digest')})"
        raise


def stdout_bytes() -> Any:
    return sys.stdout.buffer
