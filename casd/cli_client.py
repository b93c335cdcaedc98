"""The transfer commands of the ``casd`` CLI: put, get, cat, digest, uploads, login.

They talk to a server over HTTP through :mod:`casd.client`; which server and token is decided
by :mod:`casd.client.config` (flags, ``CASD_*`` variables, ``~/.config/casd/config.toml``).
Results go to stdout (``--json`` for scripts), progress to stderr; errors become one line and
the exit status of :mod:`casd.exit_codes` (the ``casd`` group does that for every
:class:`casd.errors.CasdError`). The name commands are in :mod:`casd.cli_names`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
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
    run_client,
    stdout_bytes,
)
from casd.cli_progress import Reporter
from casd.client.config import DEFAULT_URL as DEFAULT_URL  # the server when none is configured

if TYPE_CHECKING:
    from casd.client import Client, NameRecord, StoredBlob
    from casd.wire import TokenInfo


@click.command(epilog=EPILOG)
@click.argument("file", metavar="FILE|-")
@click.option("--name", help="Then point this name at the blob.")
@click.option("--create", is_flag=True, help="Only if the name does not exist yet.")
@click.option(
    "--expect-version",
    type=click.IntRange(min=1),
    help="Only if the name is at this version (compare-and-swap).",
)
@metadata_option
@client_options(transfer=True)
def put(
    file: str,
    name: str | None,
    create: bool,
    expect_version: int | None,
    metadata: tuple[str, ...],
    options: ClientOptions,
) -> None:
    """Upload FILE (- for stdin); print its digest.

    Large files go up in a resumable upload that the same command, run again after a crash
    or a kill, resumes where the server stands. With --name, NAME is then pointed at the blob;
    the token's right to write NAME (and --create / --expect-version) is checked before any
    byte is sent. Without --create or --expect-version, --name is last-writer-wins: it
    replaces whatever NAME points at when the upload ends.
    """
    check_precondition(create, expect_version)
    if (create or expect_version or metadata) and not name:
        raise click.UsageError("--create, --expect-version and --metadata need --name")
    pairs = parse_metadata(metadata)
    source = None if file == "-" else Path(file)
    if source is not None and not source.is_file():
        raise click.BadParameter(f"{file!r} is not a file", param_hint="FILE")

    async def work(client: Client, reporter: Reporter) -> dict[str, Any]:
        if name:
            await check_name_write(client, name, create, expect_version)
        blob = await upload(client, reporter, source)
        record = await point(client, name, blob.digest, create, expect_version, pairs)
        return {
            "digest": blob.digest,
            "size": blob.size,
            "created": blob.created,
            "name": record.as_dict() if record else None,
        }

    result = run_client(options, work)
    emit(options.as_json, result, result["digest"])


async def upload(client: Client, reporter: Reporter, source: Path | None) -> StoredBlob:
    if source is None:
        return await client.put_stream(sys.stdin.buffer)
    return await client.put_file(
        source,
        hashing=reporter.progress(f"hashing {source.name}"),
        progress=reporter.progress(f"uploading {source.name}"),
    )


async def check_name_write(
    client: Client, name: str, create: bool, expect_version: int | None
) -> None:
    """Fail before any byte goes out if the write of ``name`` cannot succeed: the token may
    not write it (as ``GET /v1/token`` tells), or the name is not where it is expected."""
    from casd.errors import Forbidden, PreconditionFailed, Unauthorized
    from casd.wire import prefix_covers

    if client.token is None:
        raise Unauthorized("writing a name needs a token (--token, CASD_TOKEN, casd login)")
    info = await client.token_info()
    if info is not None and not info.admin:
        prefixes = [prefix for prefix in info.write_prefixes if isinstance(prefix, str)]
        if not any(prefix_covers(prefix, name) for prefix in prefixes):
            shown = ", ".join(repr(prefix) for prefix in prefixes) or "nothing"
            raise Forbidden(f"this token may not write {name!r} (it writes {shown})")
    if not create and expect_version is None:
        return
    current = await client.current(name)
    if create and current is not None:
        raise PreconditionFailed(
            f"{name} exists (version {current.version}: {current.digest}); --create leaves it"
        )
    if expect_version is not None and (current is None or current.version != expect_version):
        where = f"at version {current.version}" if current else "absent"
        raise PreconditionFailed(f"{name} is {where}, not at version {expect_version}")


async def point(
    client: Client,
    name: str | None,
    digest: str,
    create: bool,
    expect_version: int | None,
    metadata: dict[str, Any] | None,
) -> NameRecord | None:
    if not name:
        return None
    if not create and expect_version is None:
        return await client.tag(name, digest, metadata=metadata)
    return await explain_conflict(
        client.set_name(name, digest, version=expect_version, create=create, metadata=metadata)
    )


@click.command(epilog=EPILOG)
@click.argument("ref", metavar="NAME|DIGEST")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE|-",
    help="Where to write the verified bytes (- for stdout).",
)
@client_options(transfer=True)
def get(ref: str, output: str, options: ClientOptions) -> None:
    """Download a name or a digest to a file, verified; print the digest.

    The file appears only once its digest is verified. An interrupted download leaves a
    partial file next to it (.FILE.<digest>.casd-part) that the same command resumes. With
    -o -, the bytes go to stdout as they come and are verified at the end (exit status 6 if
    they were wrong).
    """
    if output == "-":
        fetch_to_stdout(ref, options)
        return
    target = Path(output)

    async def work(client: Client, reporter: Reporter) -> dict[str, Any]:
        digest = await digest_of(client, ref)
        progress = reporter.progress(f"downloading {target.name}")
        blob = await client.get_blob(digest, target, progress=progress)
        return {"digest": blob.digest, "size": blob.size, "path": str(target)}

    result = run_client(options, work)
    emit(options.as_json, result, result["digest"])


async def digest_of(client: Client, ref: str) -> str:
    from casd.digests import is_digest_ref

    return ref if is_digest_ref(ref) else (await client.resolve(ref)).digest


def fetch_to_stdout(ref: str, options: ClientOptions) -> None:
    async def work(client: Client, reporter: Reporter) -> None:
        digest = await digest_of(client, ref)
        stream = stdout_bytes()
        await client.get_stream(digest, stream, progress=reporter.progress(f"downloading {ref}"))
        stream.flush()

    run_client(options, work)


@click.command(epilog=EPILOG)
@click.argument("ref", metavar="NAME|DIGEST")
@client_options(transfer=True)
def cat(ref: str, options: ClientOptions) -> None:
    """Write a name's or a digest's bytes to stdout, verified at the end."""
    fetch_to_stdout(ref, options)


@click.command("digest")
@click.argument("file", metavar="FILE|-")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def digest_command(file: str, as_json: bool, quiet: bool) -> None:
    """Print the digest of FILE (- for stdin) as casd names it: blake3:<64 hex>."""
    from casd.client.files import hash_file, hash_stream

    reporter = Reporter(quiet)
    try:
        if file == "-":
            digest, size = hash_stream(sys.stdin.buffer)
        else:
            digest, size = hash_file(Path(file), reporter.progress(f"hashing {Path(file).name}"))
    finally:
        reporter.close()
    emit(as_json, {"digest": digest, "size": size}, digest)


@click.command(epilog=EPILOG)
@click.option("--cancel", multiple=True, metavar="ID", help="Cancel this upload (repeatable).")
@client_options()
def uploads(cancel: tuple[str, ...], options: ClientOptions) -> None:
    """List the resumable uploads of your token (id, bytes, age), or cancel some."""

    async def work(client: Client, reporter: Reporter) -> list[dict[str, Any]]:
        for upload_id in cancel:
            await client.cancel_upload(upload_id)
        return [] if cancel else await client.uploads()

    listed = run_client(options, work)
    if cancel:
        click.echo(f"cancelled {len(cancel)} upload(s)", err=True)
        return
    local = {record.upload_url: record for _, record in journal_records()}
    for upload in listed:
        known = local.get(upload["url"])
        upload["file"] = known.file.path if known else None
    lines = [upload_line(upload) for upload in listed]
    emit(options.as_json, listed, "\n".join(lines))


def journal_records() -> list[Any]:
    from casd.client.state import UploadJournal

    return list(UploadJournal().records())


def upload_line(upload: dict[str, Any]) -> str:
    from casd.cli_progress import human_bytes, human_seconds

    length = human_bytes(upload["length"]) if upload["length"] is not None else "?"
    file = f"\t{upload['file']}" if upload.get("file") else ""
    return (
        f"{upload['id']}\t{human_bytes(upload['offset'])} of {length}"
        f"\tage {human_seconds(upload['age'])}{file}"
    )


@click.command(epilog=EPILOG)
@click.option("--server", default="default", show_default=True, help="Keep it under this name.")
@click.option("--url", help="The server's URL (default: CASD_URL, the config file, local).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the token from here (default: stdin when it is not a terminal, else a prompt).",
)
def login(server: str, url: str | None, token_file: Path | None) -> None:
    """Check a token against a server and keep it (mode 0600) for the next commands."""
    from casd.client import Client
    from casd.client.config import ClientConfig, read_token_file, save_login

    config = ClientConfig.load()
    known = config.servers.get(server)
    url = url or os.environ.get("CASD_URL") or (known.url if known else None)
    if url is None:
        raise click.UsageError("give --url (or CASD_URL) for a server not yet configured")
    if token_file is not None:
        token = read_token_file(token_file)
    elif not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
    else:
        token = click.prompt("token", hide_input=True).strip()
    if not token:
        raise click.UsageError("no token given")

    async def check() -> TokenInfo | None:
        async with Client(url, token) as client:
            return await client.token_info()

    info = asyncio.run(check())
    stored = save_login(server, url, token)
    who = f"token {info.id} ({info.label or 'no label'})" if info else "a token"
    click.echo(f"logged in to {url} as {who}; the token is in {stored}", err=True)


COMMANDS = (put, get, cat, digest_command, uploads, login)


def register(group: click.Group) -> None:
    from casd import cli_names

    for command in (*COMMANDS, *cli_names.COMMANDS):
        group.add_command(command)
