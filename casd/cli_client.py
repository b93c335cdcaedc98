"""The client commands of the ``casd`` CLI: put, get, resolve, tag, history.

They talk to a server over HTTP through :mod:`casd.client`, reading ``CASD_URL`` and
``CASD_TOKEN`` (or ``--url`` and ``--token``). Results go to stdout (``--json`` for scripts),
a progress bar to stderr when it is a terminal; errors become one line and a non-zero exit
(the ``casd`` group does that for every :class:`casd.errors.CasdError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from casd.config import DEFAULT_LISTEN

if TYPE_CHECKING:
    from casd.client import Client, NameRecord, Progress

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = f"http://{DEFAULT_LISTEN}"


def client_options(command: F) -> F:
    """--url, --token and --json, shared by every client command."""
    command = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(
        command
    )
    command = click.option("--token", envvar="CASD_TOKEN", help="Bearer token (env CASD_TOKEN).")(
        command
    )
    command = click.option(
        "--url",
        envvar="CASD_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The casd server (env CASD_URL).",
    )(command)
    return command


def with_client(
    url: str, token: str | None, work: Callable[[Client], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``work(client)`` on a fresh event loop."""
    from casd.client import Client

    async def run() -> Any:
        async with Client(url, token or None) as client:
            return await work(client)

    return asyncio.run(run())


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Progress | None]:
    """A bytes/rate/ETA bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    size = os.get_terminal_size(sys.stderr.fileno())
    # A terminal that reports no size (some pseudo-terminals) would get no bar at all.
    shape: dict[str, Any] = {} if size.columns and size.lines else {"ncols": 80, "nrows": 24}
    bar = tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, **shape)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)  # a resumed upload may step back to the server's offset

    try:
        yield update
    finally:
        bar.close()


def emit(as_json: bool, value: Any, text: str) -> None:
    click.echo(json.dumps(value, indent=2) if as_json else text)


def record_line(record: NameRecord) -> str:
    return f"{record.name} version {record.version}: {record.digest}"


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Then point this name at the blob (compare-and-swap).")
@client_options
def put(file: Path, name: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Upload FILE; print its digest."""

    async def work(client: Client) -> dict[str, Any]:
        with progress_bar(file.name) as progress:
            blob = await client.put_file(file, progress=progress)
        record = await client.tag(name, blob.digest) if name else None
        return {
            "digest": blob.digest,
            "size": blob.size,
            "created": blob.created,
            "name": record.as_dict() if record else None,
        }

    result = with_client(url, token, work)
    emit(as_json, result, result["digest"])


@click.command()
@click.argument("ref", metavar="NAME|DIGEST")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write the verified bytes.",
)
@client_options
def get(ref: str, output: Path, url: str, token: str | None, as_json: bool) -> None:
    """Download a name or a digest to a file, verified; print the digest."""

    async def work(client: Client) -> dict[str, Any]:
        with progress_bar(output.name) as progress:
            blob = await client.get(ref, output, progress=progress)
        return {"digest": blob.digest, "size": blob.size, "path": str(output)}

    result = with_client(url, token, work)
    emit(as_json, result, result["digest"])


@click.command()
@click.argument("name")
@client_options
def resolve(name: str, url: str, token: str | None, as_json: bool) -> None:
    """Print the digest a name points at."""
    record = with_client(url, token, lambda client: client.resolve(name))
    emit(as_json, record.as_dict(), record.digest)


@click.command()
@click.argument("name")
@click.argument("digest")
@click.option(
    "--expect-version", type=click.IntRange(min=1), help="Change the name only at this version."
)
@click.option("--create", is_flag=True, help="Only create the name; fail if it exists.")
@client_options
def tag(
    name: str,
    digest: str,
    expect_version: int | None,
    create: bool,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Point NAME at DIGEST. Without --expect-version or --create, whatever it points at now."""
    if expect_version is not None and create:
        raise click.UsageError("--expect-version and --create exclude each other")

    async def work(client: Client) -> NameRecord:
        if expect_version is None and not create:
            return await client.tag(name, digest)
        return await explain_conflict(
            client.set_name(name, digest, version=expect_version, create=create)
        )

    record = with_client(url, token, work)
    emit(as_json, record.as_dict(), record_line(record))


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


@click.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1, max=1000), help="At most this many changes.")
@client_options
def history(name: str, limit: int | None, url: str, token: str | None, as_json: bool) -> None:
    """Print the changes of a name, newest first."""
    entries = with_client(url, token, lambda client: client.history(name, limit=limit))
    lines = [
        f"{entry.version}\t{entry.action}\t{entry.digest or '-'}\t{entry.at}\t{entry.actor}"
        for entry in entries
    ]
    emit(as_json, [entry.as_dict() for entry in entries], "\n".join(lines))


COMMANDS = (put, get, resolve, tag, history)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
