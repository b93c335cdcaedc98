"""Generated test data: a big file re-stamped for every upload, distinct small bodies."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import blake3

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
PIECE = 16 * MIB
NONCE_SIZE = 32


@dataclass(frozen=True)
class BigFile:
    """A file on disk (in the page cache) with both digests the servers need."""

    path: Path
    size: int
    digest: str  # blake3:..., for casd
    sha256: str  # sha256:..., for the OCI registry

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("blake3:")


def make_big_file(path: Path, size: int) -> None:
    """Pseudo-random bytes (BLAKE3 in extendable-output mode: fast, incompressible)."""
    stream = blake3.blake3(b"casd bench big file")
    with path.open("wb") as file:
        for offset in range(0, size, PIECE):
            file.write(stream.digest(length=min(PIECE, size - offset), seek=offset))


def restamp(path: Path) -> BigFile:
    """Give the file new content (a fresh nonce in its first bytes) so that no server has it yet;
    return its digests."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, secrets.token_bytes(NONCE_SIZE), 0)
    finally:
        os.close(fd)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(PIECE):
            hasher.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return BigFile(path, size, f"blake3:{hasher.hexdigest()}", f"sha256:{sha.hexdigest()}")


@dataclass(frozen=True)
class SmallSet:
    """Distinct small bodies with their digests, new in every round."""

    bodies: list[bytes]
    digests: list[str]  # blake3:...
    sha256s: list[str]  # sha256:...

    @property
    def hexes(self) -> list[str]:
        return [digest.removeprefix("blake3:") for digest in self.digests]


def small_set(count: int, size: int) -> SmallSet:
    seed = blake3.blake3(secrets.token_bytes(NONCE_SIZE))
    bodies = [seed.digest(length=size, seek=index * size) for index in range(count)]
    return SmallSet(
        bodies,
        [f"blake3:{blake3.blake3(body).hexdigest()}" for body in bodies],
        [f"sha256:{hashlib.sha256(body).hexdigest()}" for body in bodies],
    )
