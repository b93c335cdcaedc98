"""Names: resolves and compare-and-swap flips on casd; tag GETs and PUTs on the OCI registry.

casd flips a name with ``If-Match: "{version}"``; a 412 answer carries the current record, so
a writer that lost the race learns the version to try next. At the end every name's version
must equal its first version plus the number of flips that were answered 200: a lost flip
(two writers both told they won) would leave it short.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from bench.data import small_set
from bench.httpload import Connection, Operation
from bench.targets import MANIFEST_TYPE, REPOSITORY, Casd, Registry, expect_status, upload_blob

NAME_PREFIX = "bench/flip"


@dataclass
class FlipBook:
    """What the flippers know and did: the version each name is at, flips won per name."""

    names: list[str]
    digests: list[str]
    known: dict[str, int] = field(default_factory=dict)
    won: Counter[str] = field(default_factory=Counter)
    first: dict[str, int] = field(default_factory=dict)


async def casd_setup(casd: Casd, count: int, tag: str) -> FlipBook:
    """Two blobs and ``count`` names (plus one hot name), created with If-None-Match: *."""
    blobs = small_set(2, 4096)
    connection = Connection(casd.port)
    try:
        for body, digest in zip(blobs.bodies, blobs.digests, strict=True):
            reply = await connection.request("PUT", f"/v1/blobs/{digest}", casd.auth, body)
            expect_status("casd blob PUT", reply.status, 200, 201)
        names = [f"{NAME_PREFIX}/{tag}/{index}" for index in range(count)]
        book = FlipBook([*names, f"{NAME_PREFIX}/{tag}/hot"], blobs.digests)
        for name in book.names:
            body = json.dumps({"digest": blobs.digests[0]}).encode()
            headers = {**casd.auth, "If-None-Match": "*", "Content-Type": "application/json"}
            reply = await connection.request("PUT", f"/v1/names/{name}", headers, body)
            expect_status("casd name create", reply.status, 201)
            book.known[name] = book.first[name] = json.loads(reply.body)["version"]
    finally:
        connection.close()
    book.names.pop()  # the hot name stays out of the distinct set
    return book


def hot_name(book: FlipBook) -> str:
    return next(name for name in book.first if name not in book.names)


def casd_flip(casd: Casd, book: FlipBook, hot: bool) -> Operation:
    """One compare-and-swap attempt: 'ok' when it won, '412' when another writer was first."""
    target = hot_name(book) if hot else None
    bodies = [json.dumps({"digest": digest}).encode() for digest in book.digests]

    async def flip(connection: Connection, index: int) -> str:
        name = target or book.names[index % len(book.names)]
        version = book.known[name]
        headers = {**casd.auth, "If-Match": f'"{version}"', "Content-Type": "application/json"}
        reply = await connection.request("PUT", f"/v1/names/{name}", headers, bodies[version % 2])
        if reply.status == 412:
            current = json.loads(reply.body).get("current")
            if not current:
                raise RuntimeError(f"casd flip of {name}: 412 without a current record")
            book.known[name] = max(book.known[name], current["version"])
            return "412"
        expect_status("casd flip", reply.status, 200)
        book.known[name] = max(book.known[name], json.loads(reply.body)["version"])
        book.won[name] += 1
        return "ok"

    return flip


async def casd_lost_flips(casd: Casd, book: FlipBook) -> int:
    """Flips answered 200 that the names' versions do not show (must be 0)."""
    connection = Connection(casd.port)
    lost = 0
    try:
        for name, first in book.first.items():
            reply = await connection.request("GET", f"/v1/names/{name}")
            expect_status("casd resolve", reply.status, 200)
            lost += first + book.won[name] - json.loads(reply.body)["version"]
    finally:
        connection.close()
    return lost


def casd_resolve_paths(book: FlipBook) -> list[str]:
    return [f"/v1/names/{name}" for name in book.names]


@dataclass
class TagBook:
    tags: list[str]
    manifests: list[bytes]


def manifest(config: tuple[bytes, str], layer: tuple[bytes, str]) -> bytes:
    def descriptor(media_type: str, blob: tuple[bytes, str]) -> dict[str, object]:
        return {"mediaType": media_type, "size": len(blob[0]), "digest": blob[1]}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        }
    ).encode()


async def registry_setup(registry: Registry, count: int, tag: str) -> TagBook:
    """A config blob, two layers, two manifests, ``count`` tags (plus one hot tag)."""
    contents = [b'{"architecture": "amd64", "os": "linux"}', *small_set(2, 4096).bodies]
    blobs = [(body, f"sha256:{hashlib.sha256(body).hexdigest()}") for body in contents]
    manifests = [manifest(blobs[0], blobs[1]), manifest(blobs[0], blobs[2])]
    book = TagBook([f"{tag}-{index}" for index in range(count)] + [f"{tag}-hot"], manifests)
    connection = Connection(registry.port)
    try:
        for body, sha in blobs:
            await upload_blob(connection, body, sha)
        for name in book.tags:
            path = f"/v2/{REPOSITORY}/manifests/{name}"
            headers = {"Content-Type": MANIFEST_TYPE}
            reply = await connection.request("PUT", path, headers, manifests[0])
            expect_status("registry manifest PUT", reply.status, 201)
    finally:
        connection.close()
    return book


def registry_flip(book: TagBook, hot: bool) -> Operation:
    """A tag PUT (the registry has no compare-and-swap: the last writer wins)."""
    headers = {"Content-Type": MANIFEST_TYPE}

    async def flip(connection: Connection, index: int) -> str:
        name = book.tags[-1] if hot else book.tags[index % (len(book.tags) - 1)]
        path = f"/v2/{REPOSITORY}/manifests/{name}"
        reply = await connection.request("PUT", path, headers, book.manifests[index % 2])
        expect_status("registry tag PUT", reply.status, 201)
        return "ok"

    return flip


def registry_resolve_paths(book: TagBook) -> list[str]:
    return [f"/v2/{REPOSITORY}/manifests/{name}" for name in book.tags[:-1]]


REGISTRY_ACCEPT = {"Accept": MANIFEST_TYPE}
