"""The name commands of the ``casd`` CLI: resolve, tag, history, ls, rm, rollback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from casd.cli_common import (
    EPILOG,
    ClientOptions,
    check_precondition,
    client_options,
    emit,
    explain_conflict,
    metadata_option,
    parse_metadata,
    record_line,
    run_client,
)
from casd.cli_progress import Reporter

if TYPE_CHECKING:
    from casd.client import Client, NameRecord


@click.command(epilog=EPILOG)
@click.argument("name")
@client_options()
def resolve(name: str, options: ClientOptions) -> None:
    """Print the digest a name points at."""
    record = run_client(options, lambda client, _: client.resolve(name))
    emit(options.as_json, record.as_dict(), record.digest)


@click.command(epilog=EPILOG)
@click.argument("name")
@click.argument("digest")
@click.option(
    "--expect-version", type=click.IntRange(min=1), help="Change the name only at this version."
)
@click.option("--create", is_flag=True, help="Only create the name; fail if it exists.")
@metadata_option
@client_options()
def tag(
    name: str,
    digest: str,
    expect_version: int | None,
    create: bool,
    metadata: tuple[str, ...],
    options: ClientOptions,
) -> None:
    """Point NAME at DIGEST. Without --expect-version or --create, whatever it points at now
    (last-writer-wins)."""
    check_precondition(create, expect_version)
    pairs = parse_metadata(metadata)

    async def work(client: Client, _: Reporter) -> NameRecord:
        if expect_version is None and not create:
            return await client.tag(name, digest, metadata=pairs)
        return await explain_conflict(
            client.set_name(name, digest, version=expect_version, create=create, metadata=pairs)
        )

    record = run_client(options, work)
    emit(options.as_json, record.as_dict(), record_line(record))


@click.command(epilog=EPILOG)
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1, max=1000), help="At most this many changes.")
@client_options()
def history(name: str, limit: int | None, options: ClientOptions) -> None:
    """Print the changes of a name, newest first."""
    entries = run_client(options, lambda client, _: client.history(name, limit=limit))
    lines = [
        f"{entry.version}\t{entry.action}\t{entry.digest or '-'}\t{entry.at}\t{entry.actor}"
        for entry in entries
    ]
    emit(options.as_json, [entry.as_dict() for entry in entries], "\n".join(lines))


@click.command("ls", epilog=EPILOG)
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many names.")
@client_options()
def list_names(prefix: str, limit: int | None, options: ClientOptions) -> None:
    """List the names that start with PREFIX (all of them, page after page), in order:
    name, version, size, digest, when it last changed."""

    async def work(client: Client, _: Reporter) -> list[NameRecord]:
        found: list[NameRecord] = []
        async for record in client.list_names(prefix, page=min(limit or 1000, 1000)):
            found.append(record)
            if limit is not None and len(found) >= limit:
                break
        return found

    records = run_client(options, work)
    lines = [
        f"{record.name}\t{record.version}\t{record.size}\t{record.digest}\t{record.updated_at}"
        for record in records
    ]
    emit(options.as_json, [record.as_dict() for record in records], "\n".join(lines))


@click.command(epilog=EPILOG)
@click.argument("name")
@click.option(
    "--expect-version", type=click.IntRange(min=1), help="Delete the name only at this version."
)
@client_options()
def rm(name: str, expect_version: int | None, options: ClientOptions) -> None:
    """Delete a name (recorded in its history; the blob stays until gc). Without
    --expect-version, whatever version it is at."""

    async def work(client: Client, _: Reporter) -> int:
        deleting = client.remove_name(name, version=expect_version)
        try:
            return await deleting
        except Exception as error:
            await explain_rm(client, name, error)
            raise

    version = run_client(options, work)
    result: dict[str, Any] = {"name": name, "version": version}
    emit(options.as_json, result, f"{name} deleted at version {version}")


async def explain_rm(client: Client, name: str, error: Exception) -> None:
    from casd.errors import PreconditionFailed

    if isinstance(error, PreconditionFailed):
        current = await client.current(name)
        if current is not None:
            error.detail += f" (it is at version {current.version}: {current.digest})"


@click.command(epilog=EPILOG)
@click.argument("name")
@click.option(
    "--to-version",
    type=click.IntRange(min=1),
    help="Go back to this version's digest and metadata (default: the last other digest).",
)
@client_options()
def rollback(name: str, to_version: int | None, options: ClientOptions) -> None:
    """Point NAME back at an earlier digest: a compare-and-swap from its current version,
    recorded in the history as a new version."""

    async def work(client: Client, _: Reporter) -> NameRecord:
        return await explain_conflict(client.rollback(name, to_version=to_version))

    record = run_client(options, work)
    emit(options.as_json, record.as_dict(), record_line(record))


COMMANDS = (resolve, tag, history, list_names, rm, rollback)
