"""The exit status of a ``casd`` client command: one per kind of failure a script branches on."""

from __future__ import annotations

import enum

from casd.errors import (
    BlobNotFound,
    BlobQuarantined,
    CasdError,
    DigestMismatch,
    Forbidden,
    InvalidDigest,
    InvalidName,
    MismatchingUploadOffset,
    NameNotFound,
    PreconditionFailed,
    PreconditionRequired,
    Unauthorized,
    Unavailable,
    UnknownBlob,
    UploadNotFound,
)


class Exit(enum.IntEnum):
    OK = 0
    OTHER = 1  # anything not below (a local file that cannot be written, 413, 507, ...)
    USAGE = 2  # bad arguments: an unknown option, a malformed name or digest
    NOT_FOUND = 3  # no such name, blob or upload (404, 422 unknown-blob)
    CONFLICT = 4  # a compare-and-swap lost: 412, 409, 428
    DENIED = 5  # no valid token (401) or the token may not do it (403)
    INTEGRITY = 6  # the bytes do not hash to their digest, or the blob is quarantined (410)
    UNAVAILABLE = 7  # the server did not answer or kept failing, after the retries


_BY_ERROR: tuple[tuple[tuple[type[CasdError], ...], Exit], ...] = (
    ((Unavailable,), Exit.UNAVAILABLE),
    ((DigestMismatch, BlobQuarantined), Exit.INTEGRITY),
    ((Unauthorized, Forbidden), Exit.DENIED),
    ((PreconditionFailed, PreconditionRequired, MismatchingUploadOffset), Exit.CONFLICT),
    ((BlobNotFound, NameNotFound, UploadNotFound, UnknownBlob), Exit.NOT_FOUND),
    ((InvalidName, InvalidDigest), Exit.USAGE),
)
_BY_STATUS = {
    401: Exit.DENIED,
    403: Exit.DENIED,
    404: Exit.NOT_FOUND,
    409: Exit.CONFLICT,
    410: Exit.INTEGRITY,
    412: Exit.CONFLICT,
    428: Exit.CONFLICT,
}


def exit_code(error: CasdError) -> Exit:
    if error.code.endswith("quota-exceeded"):
        return Exit.OTHER  # a 409 or 413 that no retry of the compare-and-swap mends
    for kinds, code in _BY_ERROR:
        if isinstance(error, kinds):
            return code
    return _BY_STATUS.get(error.status, Exit.OTHER)


HELP = """Exit status: 0 success, 1 other failure, 2 usage error (bad arguments, malformed
name or digest), 3 not found (name, blob, upload), 4 conflict (412/409/428: the name moved
on), 5 unauthorized or forbidden (401/403), 6 integrity failure (digest mismatch,
quarantined blob), 7 server unavailable after the retries (or TLS failure)."""
