"""Typed errors of casd.

Every error a client can see is a subclass of :class:`CasdError`; its ``code`` is the
problem+json slug of the API contract, whose HTTP status and title come from the one table in
:mod:`casd.wire` (so the server and the client cannot disagree), and its docstring the default
message. What an error says beyond that is in typed fields (``offset``, ``retry_after``, a
name's ``current`` record): no service speaks HTTP; ``casd.http.problems`` renders the fields
as headers and members of the problem body, in exactly one middleware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from casd.wire import PROBLEMS

if TYPE_CHECKING:
    from casd.names import NameRecord


class CasdError(Exception):
    """Something went wrong."""

    status: int = 500
    code: str = "internal-error"
    title: str = "Internal Server Error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class naming a code of the contract answers with that code's status and title
        # (unless it is a variant with a status of its own, like a 416 invalid-request).
        if "code" in cls.__dict__ and "status" not in cls.__dict__ and cls.code in PROBLEMS:
            cls.status, cls.title = PROBLEMS[cls.code]

    def __init__(
        self,
        detail: str | None = None,
        *,
        offset: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        # The byte at which the upload this error concerns goes on (all before it is kept).
        self.offset = offset
        # Seconds after which the same request may well succeed.
        self.retry_after = retry_after
        # Members of a problem body that a client received and no field above holds.
        self.extra: dict[str, Any] = {}
        super().__init__(self.detail)


class InvalidDigest(CasdError):
    """The digest is malformed (casd.wire.DIGEST_FORMAT says what a digest is)."""

    code = "invalid-digest"


class DigestMismatch(CasdError):
    """The bytes do not hash to the expected digest; nothing was stored."""

    code = "digest-mismatch"


class InvalidName(CasdError):
    """Invalid name."""

    code = "invalid-name"


class InvalidRequest(CasdError):
    """The request is malformed."""

    code = "invalid-request"


class RouteNotFound(InvalidRequest):
    """No such resource."""

    status, title = 404, "Not Found"


class MethodNotAllowed(InvalidRequest):
    """Method not allowed on this resource."""

    status, title = 405, "Method Not Allowed"

    def __init__(self, detail: str | None = None, *, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.allowed = allowed  # the methods the resource has


class RangeNotSatisfiable(InvalidRequest):
    """The requested range lies outside the blob."""

    status, title = 416, "Range Not Satisfiable"

    def __init__(self, detail: str | None = None, *, size: int) -> None:
        super().__init__(detail)
        self.size = size  # of the whole blob


class ExpectationFailed(InvalidRequest):
    """Only 'Expect: 100-continue' is understood."""

    status, title = 417, "Expectation Failed"


class BlobNotFound(CasdError):
    """No blob with this digest is stored."""

    code = "blob-not-found"


class BlobQuarantined(CasdError):
    """The stored bytes of this blob were found corrupt; it is quarantined."""

    code = "blob-quarantined"


class UnknownBlob(CasdError):
    """The digest does not name a stored, healthy blob."""

    code = "unknown-blob"


class NameNotFound(CasdError):
    """No such name."""

    code = "name-not-found"


class PreconditionRequired(CasdError):
    """This request needs 'If-None-Match: *' or 'If-Match: "<version>"'."""

    code = "precondition-required"


class PreconditionFailed(CasdError):
    """The precondition was not met."""

    code = "precondition-failed"


class NameConflict(PreconditionFailed):
    """The name is not as the write expected."""

    def __init__(self, detail: str | None = None, *, current: NameRecord | None) -> None:
        super().__init__(detail)
        self.current = current  # the name as it is now; None: it does not exist


class UploadNotFound(CasdError):
    """No such upload."""

    code = "upload-not-found"


class MismatchingUploadOffset(CasdError):
    """Upload-Offset does not match the server's offset."""

    code = "mismatching-upload-offset"


class PayloadTooLarge(CasdError):
    """The body is larger than this server accepts."""

    code = "payload-too-large"


class InsufficientStorage(CasdError):
    """The blob store is out of space; nothing was stored."""

    code = "insufficient-storage"


class Unauthorized(CasdError):
    """A valid bearer token is needed."""

    code = "unauthorized"


class Forbidden(CasdError):
    """The token may not write here."""

    code = "forbidden"


class QuotaExceeded(PayloadTooLarge):
    """The upload would take the token past its byte budget; nothing was stored."""

    code = "quota-exceeded"


class NamespaceQuotaExceeded(CasdError):
    """The names under a prefix would reference more bytes than its quota allows."""

    code = "namespace-quota-exceeded"

    def __init__(
        self,
        detail: str | None = None,
        *,
        prefix: str | None = None,
        quota_bytes: int | None = None,
        used_bytes: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.prefix = prefix  # of the policy whose quota the write would exceed
        self.quota_bytes = quota_bytes
        self.used_bytes = used_bytes  # what the names under the prefix reference now


class ProtectedName(Forbidden):
    """Names under a protected prefix can be deleted only by an admin token."""

    code = "protected-name"


class ImmutableName(Forbidden):
    """Names under an immutable prefix are created once and never changed."""

    code = "immutable-name"


class TokenNotFound(CasdError):
    """No such token (or none this token may see)."""

    code = "token-not-found"


class PolicyNotFound(CasdError):
    """No policy for this prefix."""

    code = "policy-not-found"


class Unavailable(CasdError):
    """A backing service (database or blob store) is not answering."""

    code = "unavailable"


class NotReady(Unavailable):
    """This server cannot serve every request now."""

    def __init__(self, detail: str, *, state: str, checks: dict[str, str]) -> None:
        super().__init__(detail)
        self.state = state  # "degraded" (reads still work) or "unavailable"
        self.checks = checks  # each backing service: "ok" or what is wrong with it


class RequestTimeout(CasdError):
    """The request body stalled: no byte arrived for too long."""

    code = "request-timeout"


class UnsupportedEncoding(CasdError):
    """Bodies are stored as sent: only 'Content-Encoding: identity' is accepted."""

    code = "unsupported-content-encoding"


class TooManyUploads(CasdError):
    """This token has as many uploads in progress as this server allows; retry later."""

    code = "too-many-uploads"

    def __init__(self, detail: str | None = None, *, retry_after: int | None = 1) -> None:
        super().__init__(detail, retry_after=retry_after)


class IncompleteBody(InvalidRequest):
    """The request body ended before its announced length."""


class BodyStalled(TimeoutError):
    """No byte of the request body arrived for too long (set on the body's stream, so that
    whatever reads it next ends). A TimeoutError, as aiohttp expects of an ended body: it then
    drops the rest quietly after the answer and closes the connection."""
