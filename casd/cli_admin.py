"""Administrative commands over HTTP: tokens (for ``casd token``), policies, promotion.

They read ``CASD_URL`` and ``CASD_TOKEN`` (or ``--url`` and ``--token``) like the client
commands; errors become one line and a non-zero exit (the ``casd`` group does that).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import click

from casd import wire
from casd.cli_common import byte_size
from casd.config import parse_duration

if TYPE_CHECKING:
    from casd.auth import TokenSpec
    from casd.client import Client

F = TypeVar("F", bound=Callable[..., Any])


def http_options(command: F) -> F:
    """--url and --token: the server to talk to and the bearer token."""
    command = click.option("--token", envvar="CASD_TOKEN", help="Bearer token (env CASD_TOKEN).")(
        command
    )
    return click.option("--url", envvar="CASD_URL", help="The casd server (env CASD_URL).")(command)


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """30s, 15m, 24h, 7d (see casd.config.parse_duration) as seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def call(
    url: str | None, token: str | None, work: Callable[[Client], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``work(client)`` against the server on a fresh event loop."""
    from casd.cli_client import DEFAULT_URL
    from casd.client import Client

    async def run() -> Any:
        async with Client(url or DEFAULT_URL, token or None) as client:
            return await work(client)

    return asyncio.run(run())


async def request(
    client: Client, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any
) -> Any:
    from casd.errors import NameNotFound

    _, body, _ = await client.request_json(
        method, client.endpoint(path), ok=ok, not_found=NameNotFound, **kwargs
    )
    return body


# --- tokens (the HTTP half of ``casd token``) ---


def create_token(url: str | None, token: str | None, spec: TokenSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label": spec.label,
        "write_prefixes": list(spec.write_prefixes),
        "read_prefixes": None if spec.read_prefixes is None else list(spec.read_prefixes),
        "rights": ["mint"] if spec.mint else [],
        "expires_in": spec.expires_in,
        "quota_bytes": spec.quota_bytes,
    }
    created: dict[str, Any] = call(
        url, token, lambda client: request(client, "POST", "/v1/tokens", (201,), json=body)
    )
    return created


def list_tokens(url: str | None, token: str | None) -> list[dict[str, Any]]:
    body = call(url, token, lambda client: request(client, "GET", "/v1/tokens"))
    return [as_shape(wire.TokenInfo, record) for record in body["tokens"]]


def as_shape(shape: type[wire.Shape], record: Any) -> dict[str, Any]:
    """A record of the server as its wire shape has it: members an older server lacks take
    their defaults, those a newer one adds are left out."""
    from casd.client.records import parsed

    return parsed(shape, record).to_json()


def revoke_token(url: str | None, token: str | None, token_id: int) -> list[int]:
    body = call(url, token, lambda client: request(client, "DELETE", f"/v1/tokens/{token_id}"))
    revoked: list[int] = body["revoked"]
    return revoked


def token_row(record: dict[str, Any]) -> dict[str, Any]:
    """A token as ``casd token list --json`` prints it (the same over HTTP and locally)."""
    return {
        "id": record["id"],
        "name": record["label"],
        "write": record["write_prefixes"],
        "read": record["read_prefixes"],
        "rights": record["rights"],
        "expires_at": record["expires_at"],
        "quota_bytes": record["quota_bytes"],
        "used_bytes": record["used_bytes"],
        "minted_by": record["minted_by"],
        "created_at": record["created_at"],
        "revoked_at": record["revoked_at"],
    }


def token_line(row: dict[str, Any]) -> str:
    state = "revoked" if row["revoked_at"] else "active"
    prefixes = ", ".join(repr(prefix) for prefix in row["write"])
    line = f"{row['id']}\t{state}\t{row['name']}\twrite: {prefixes}"
    if row["read"] is not None:
        line += "\tread: " + ", ".join(repr(prefix) for prefix in row["read"])
    if row["rights"]:
        line += "\trights: " + ",".join(row["rights"])
    if row["expires_at"]:
        line += f"\texpires: {row['expires_at']}"
    if row["quota_bytes"] is not None:
        line += f"\tquota: {row['used_bytes']}/{row['quota_bytes']}"
    return line


# --- policies ---


@click.group()
def policy() -> None:
    """Show and set the policies of name prefixes (protection, quotas, retention) over HTTP."""


def policy_path(prefix: str) -> str:
    return "/v1/policies/" + quote(prefix.strip("/"), safe="/")


def policy_line(record: dict[str, Any]) -> str:
    parts = [record["prefix"]]
    parts += [flag for flag in ("protected", "immutable") if record[flag]]
    if record["quota_bytes"] is not None:
        parts.append(f"quota {record['used_bytes']}/{record['quota_bytes']} bytes")
    if record["delete_after"] is not None:
        parts.append(f"delete after {record['delete_after']:g}s")
    if record["keep_versions"] is not None:
        parts.append(f"keep {record['keep_versions']} versions")
    return "\t".join(parts)


@policy.command("list")
@http_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def policy_list(url: str | None, token: str | None, as_json: bool) -> None:
    """List every policy with the bytes its names reference."""
    body = call(url, token, lambda client: request(client, "GET", "/v1/policies"))
    policies = [as_shape(wire.PolicyRecord, record) for record in body["policies"]]
    if as_json:
        click.echo(json.dumps(policies, indent=2))
    for record in [] if as_json else policies:
        click.echo(policy_line(record))


@policy.command("set")
@click.argument("prefix")
@click.option("--protected/--no-protected", default=None, help="Only admins delete names.")
@click.option("--immutable/--no-immutable", default=None, help="Names are created once.")
@click.option("--quota", callback=byte_size, help="Bytes its names may reference (10GiB).")
@click.option("--no-quota", is_flag=True, help="Remove the quota.")
@click.option("--delete-after", callback=duration, help="Delete names this long after a change.")
@click.option("--keep-forever", is_flag=True, help="Remove --delete-after.")
@click.option("--keep-versions", type=click.IntRange(min=0), help="gc keeps N digests per name.")
@click.option("--default-versions", is_flag=True, help="Remove --keep-versions.")
@http_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def policy_set(
    prefix: str, url: str | None, token: str | None, as_json: bool, **given: Any
) -> None:
    """Create or change the policy of PREFIX; what is not given stays as it is."""
    from casd.errors import CasdError

    async def work(client: Client) -> Any:
        try:
            current = await request(client, "GET", policy_path(prefix))
        except CasdError as error:
            if error.code != "policy-not-found":
                raise
            current = {}
        body = changed_policy(current, given)
        return await request(client, "PUT", policy_path(prefix), (200, 201), json=body)

    record = as_shape(wire.PolicyRecord, call(url, token, work))
    click.echo(json.dumps(record, indent=2) if as_json else policy_line(record))


def changed_policy(current: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    keys = ("protected", "immutable", "quota_bytes", "delete_after", "keep_versions")
    body = {key: current.get(key) for key in keys}
    for flag in ("protected", "immutable"):
        if given[flag] is not None:
            body[flag] = given[flag]
    for key, value, off in (
        ("quota_bytes", given["quota"], given["no_quota"]),
        ("delete_after", given["delete_after"], given["keep_forever"]),
        ("keep_versions", given["keep_versions"], given["default_versions"]),
    ):
        if off:
            body[key] = None
        elif value is not None:
            body[key] = value
    return body


@policy.command("rm")
@click.argument("prefix")
@http_options
def policy_rm(prefix: str, url: str | None, token: str | None) -> None:
    """Remove the policy of PREFIX."""
    call(url, token, lambda client: request(client, "DELETE", policy_path(prefix), (204,)))
    click.echo(f"removed the policy of {prefix}", err=True)


# --- promotion ---


@click.command()
@click.argument("source")
@click.argument("target")
@click.option(
    "--expect-version", type=click.IntRange(min=1), help="Change TARGET only at this version."
)
@click.option("--create", is_flag=True, help="Only create TARGET; fail if it exists.")
@click.option("--source-version", type=click.IntRange(min=1), help="Only SOURCE at this version.")
@http_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def promote(
    source: str,
    target: str,
    expect_version: int | None,
    create: bool,
    source_version: int | None,
    url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Point TARGET at what SOURCE points at, recording SOURCE and its version in TARGET's
    history. Without --expect-version or --create, whatever TARGET is at now."""
    if expect_version is not None and create:
        raise click.UsageError("--expect-version and --create exclude each other")
    body: dict[str, Any] = {"source": source}
    if source_version is not None:
        body["source_version"] = source_version

    async def work(client: Client) -> Any:
        from casd.errors import NameNotFound

        condition = {"If-None-Match": "*"} if create else {}
        if expect_version is not None:
            condition = {"If-Match": f'"{expect_version}"'}
        elif not create:
            try:
                condition = {"If-Match": f'"{(await client.resolve(target)).version}"'}
            except NameNotFound:
                condition = {"If-None-Match": "*"}
        path = "/v1/names/" + quote(target, safe="/")
        return await request(client, "PUT", path, (200, 201), json=body, headers=condition)

    record = as_shape(wire.NameRecord, call(url, token, work))
    line = f"{record['name']} version {record['version']}: {record['digest']} (from {source})"
    click.echo(json.dumps(record, indent=2) if as_json else line)


def register(group: click.Group) -> None:
    group.add_command(policy)
    group.add_command(promote)
