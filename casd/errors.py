"""Typed errors of casd.

Every error a client can see is a subclass of :class:`CasdError`; its ``code`` is the
problem+json slug of the API contract and its docstring the default message. The HTTP
layer maps them to responses in exactly one middleware.
"""

from __future__ import annotations

from typing import Any


class CasdError(Exception):
    """Something went wrong."""

    status: int = 500
    code: str = "internal-error"
    title: str = "Internal Server Error"

    def __init__(
        self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.headers = headers or {}
        self.extra = extra  # more members of the problem body, e.g. "current"
        super().__init__(self.detail)


class InvalidDigest(CasdError):
    """A digest is 'blake3:' followed by 64 lowercase hex characters."""

    status, code, title = 400, "invalid-digest", "Invalid digest"


class DigestMismatch(CasdError):
    """The bytes do not hash to the expected digest; nothing was stored."""

    status, code, title = 400, "digest-mismatch", "Digest mismatch"


class InvalidName(CasdError):
    """Invalid name."""

    status, code, title = 400, "invalid-name", "Invalid name"


class InvalidRequest(CasdError):
    """The request is malformed."""

    status, code, title = 400, "invalid-request", "Invalid request"


class RouteNotFound(InvalidRequest):
    """No such resource."""

    status, title = 404, "Not Found"


class MethodNotAllowed(InvalidRequest):
    """Method not allowed on this resource."""

    status, title = 405, "Method Not Allowed"


class ExpectationFailed(InvalidRequest):
    """Only 'Expect: 100-continue' is understood."""

    status, title = 417, "Expectation Failed"


class BlobNotFound(CasdError):
    """No blob with this digest is stored."""

    status, code, title = 404, "blob-not-found", "Blob not found"


class BlobQuarantined(CasdError):
    """The stored bytes of this blob were found corrupt; it is quarantined."""

    status, code, title = 410, "blob-quarantined", "Blob quarantined"


class UnknownBlob(CasdError):
    """The digest does not name a stored, healthy blob."""

    status, code, title = 422, "unknown-blob", "Unknown blob"


class NameNotFound(CasdError):
    """No such name."""

    status, code, title = 404, "name-not-found", "Name not found"


class PreconditionRequired(CasdError):
    """This request needs 'If-None-Match: *' or 'If-Match: "<version>"'."""

    status, code, title = 428, "precondition-required", "Precondition required"


class PreconditionFailed(CasdError):
    """The precondition was not met."""

    status, code, title = 412, "precondition-failed", "Precondition failed"


class UploadNotFound(CasdError):
    """No such upload."""

    status, code, title = 404, "upload-not-found", "Upload not found"


class MismatchingUploadOffset(CasdError):
    """Upload-Offset does not match the server's offset."""

    status, code, title = 409, "mismatching-upload-offset", "Mismatching upload offset"


class PayloadTooLarge(CasdError):
    """The body is larger than this server accepts."""

    status, code, title = 413, "payload-too-large", "Payload too large"


class InsufficientStorage(CasdError):
    """The blob store is out of space; nothing was stored."""

    status, code, title = 507, "insufficient-storage", "Insufficient storage"


class Unauthorized(CasdError):
    """A valid bearer token is needed."""

    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        # RFC 9110: a 401 names the authentication scheme it wants.
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="casd"')


class Forbidden(CasdError):
    """The token may not write here."""

    status, code, title = 403, "forbidden", "Forbidden"


class QuotaExceeded(PayloadTooLarge):
    """The upload would take the token past its byte budget; nothing was stored."""

    status, code, title = 413, "quota-exceeded", "Quota exceeded"


class NamespaceQuotaExceeded(CasdError):
    """The names under a prefix would reference more bytes than its quota allows."""

    status, code, title = 409, "namespace-quota-exceeded", "Namespace quota exceeded"


class ProtectedName(Forbidden):
    """Names under a protected prefix can be deleted only by an admin token."""

    status, code, title = 403, "protected-name", "Protected name"


class ImmutableName(Forbidden):
    """Names under an immutable prefix are created once and never changed."""

    status, code, title = 403, "immutable-name", "Immutable name"


class TokenNotFound(CasdError):
    """No such token (or none this token may see)."""

    status, code, title = 404, "token-not-found", "Token not found"


class PolicyNotFound(CasdError):
    """No policy for this prefix."""

    status, code, title = 404, "policy-not-found", "Policy not found"


class Unavailable(CasdError):
    """A backing service (database or blob store) is not answering."""

    status, code, title = 503, "unavailable", "Service unavailable"


class RequestTimeout(CasdError):
    """The request body stalled: no byte arrived for too long."""

    status, code, title = 408, "request-timeout", "Request Timeout"


class UnsupportedEncoding(CasdError):
    """Bodies are stored as sent: only 'Content-Encoding: identity' is accepted."""

    status, code, title = 415, "unsupported-content-encoding", "Unsupported Media Type"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        # RFC 9110 section 15.5.16: a 415 for a content coding says which codings are accepted.
        self.headers.setdefault("Accept-Encoding", "identity")


class TooManyUploads(CasdError):
    """This token has as many uploads in progress as this server allows; retry later."""

    status, code, title = 429, "too-many-uploads", "Too Many Requests"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", "1")


class IncompleteBody(InvalidRequest):
    """The request body ended before its announced length."""


class BodyStalled(TimeoutError):
    """No byte of the request body arrived for too long (set on the body's stream, so that
    whatever reads it next ends). A TimeoutError, as aiohttp expects of an ended body: it then
    drops the rest quietly after the answer and closes the connection."""
