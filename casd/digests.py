"""BLAKE3 digests: parsing, computing, and the one function that maps a digest to a path.

The format itself (``blake3:<64 hex>``) is spelled out once, in :mod:`casd.wire`."""

from __future__ import annotations

from pathlib import PurePosixPath

import blake3

from casd.errors import InvalidDigest
from casd.wire import DIGEST_ALGORITHM as ALGORITHM
from casd.wire import DIGEST_FORMAT, DIGEST_PREFIX, is_digest


def parse_digest(text: str) -> str:
    """Return ``text`` if it is a well-formed digest, else raise :class:`InvalidDigest`."""
    if not is_digest(text):
        raise InvalidDigest(f"{text[:100]!r} is not {DIGEST_FORMAT}")
    return text


def is_digest_ref(ref: str) -> bool:
    """Whether a reference a user gives means a digest rather than a name (names have no
    colon)."""
    return ref.startswith(DIGEST_PREFIX)


def hex_of(digest: str) -> str:
    return digest.removeprefix(DIGEST_PREFIX)


def digest_from_hex(hexdigest: str) -> str:
    return DIGEST_PREFIX + hexdigest


def blob_relpath(digest: str) -> PurePosixPath:
    """``blake3/<hex[0:2]>/<hex>``: where a blob lives below the store's root."""
    hexdigest = hex_of(parse_digest(digest))
    return PurePosixPath(ALGORITHM, hexdigest[:2], hexdigest)


def new_hasher() -> blake3.blake3:
    # One thread per hash: the server overlaps many streams, so each stays on one core.
    return blake3.blake3()


def format_digest(hasher: blake3.blake3) -> str:
    return digest_from_hex(hasher.hexdigest())


def digest_of(data: bytes) -> str:
    return format_digest(blake3.blake3(data))


def lock_key(digest: str) -> int:
    """A signed 64-bit advisory-lock key for one blob, the same in every process."""
    return int.from_bytes(bytes.fromhex(hex_of(digest)[:16]), "big", signed=True)


# The first key of every publish lock, "casp": the two-key space, apart from the one-key blob
# locks and from the upload process locks ("casd", n).
PUBLISH_LOCK_NAMESPACE = 0x63617370


def publish_lock_key(digest: str) -> tuple[int, int]:
    """The two-key advisory lock that serialises the publishers of one digest (32 bits of the
    digest: two digests that share them merely wait for each other)."""
    return PUBLISH_LOCK_NAMESPACE, int.from_bytes(
        bytes.fromhex(hex_of(digest)[:8]), "big", signed=True
    )
