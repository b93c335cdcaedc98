"""Typed errors rendered as problem+json: each field of an error becomes its header or member."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from casd.errors import (
    CasdError,
    IncompleteBody,
    InvalidRequest,
    MethodNotAllowed,
    MismatchingUploadOffset,
    NameConflict,
    NamespaceQuotaExceeded,
    NotReady,
    PreconditionFailed,
    RangeNotSatisfiable,
    RequestTimeout,
    TooManyUploads,
    Unauthorized,
    Unavailable,
    UnsupportedEncoding,
)
from casd.http.problems import problem_body, problem_headers, problem_response
from casd.names import NameRecord
from casd.wire import PROBLEM_JSON

pytestmark = pytest.mark.unit

BASE = {"type", "title", "status", "detail", "code"}


@pytest.mark.parametrize(
    "error",
    [
        MismatchingUploadOffset("", offset=7),
        Unavailable("", offset=7),
        RequestTimeout("", offset=7),
        IncompleteBody("", offset=7),
    ],
)
def test_an_offset_is_the_upload_offset_header(error: CasdError) -> None:
    assert problem_headers(error) == {"Upload-Offset": "7"}
    assert problem_body(error).keys() == BASE


def test_retry_after_is_the_retry_after_header() -> None:
    assert problem_headers(Unavailable("busy", retry_after=3)) == {"Retry-After": "3"}
    assert problem_headers(TooManyUploads()) == {"Retry-After": "1"}
    both = Unavailable("resume later", offset=0, retry_after=1)
    assert problem_headers(both) == {"Upload-Offset": "0", "Retry-After": "1"}


def test_the_allowed_methods_are_the_allow_header() -> None:
    assert problem_headers(MethodNotAllowed(allowed=("GET", "HEAD"))) == {"Allow": "GET,HEAD"}
    assert problem_headers(MethodNotAllowed()) == {}


def test_the_size_of_an_unsatisfiable_range_is_the_content_range_header() -> None:
    assert problem_headers(RangeNotSatisfiable("", size=10)) == {"Content-Range": "bytes */10"}


def test_fixed_headers_of_their_kinds() -> None:
    assert problem_headers(Unauthorized()) == {"WWW-Authenticate": 'Bearer realm="casd"'}
    assert problem_headers(UnsupportedEncoding()) == {"Accept-Encoding": "identity"}


def test_an_error_without_fields_has_no_headers_and_the_five_members() -> None:
    error = InvalidRequest("bad")
    assert problem_headers(error) == {}
    assert problem_body(error) == {
        "type": "about:blank",
        "title": "Invalid request",
        "status": 400,
        "detail": "bad",
        "code": "invalid-request",
    }


def test_a_name_conflict_carries_the_current_record_or_null() -> None:
    record = NameRecord(
        "a/b", "blake3:" + "0" * 64, 3, 2, {"k": "v"}, True, datetime(2026, 1, 1, tzinfo=UTC), "ci"
    )
    body = problem_body(NameConflict("moved", current=record))
    assert body["current"] == record.as_dict()
    assert body["status"] == 412 and body["code"] == "precondition-failed"
    assert problem_body(NameConflict("gone", current=None))["current"] is None
    assert "current" not in problem_body(PreconditionFailed("source moved"))


def test_not_ready_carries_its_state_and_checks() -> None:
    checks = {"database": "ok", "blob_store": "full"}
    body = problem_body(NotReady("blob_store: full", state="degraded", checks=checks))
    assert (body["state"], body["checks"], body["code"]) == ("degraded", checks, "unavailable")


def test_a_namespace_quota_names_its_prefix_quota_and_usage() -> None:
    error = NamespaceQuotaExceeded("over", prefix="ci", quota_bytes=100, used_bytes=90)
    body = problem_body(error)
    assert (body["prefix"], body["quota_bytes"], body["used_bytes"]) == ("ci", 100, 90)
    assert problem_headers(error) == {}


def test_the_response_has_status_type_headers_and_body() -> None:
    response = problem_response(MismatchingUploadOffset("behind", offset=42))
    assert response.status == 409
    assert response.content_type == PROBLEM_JSON
    assert response.headers["Upload-Offset"] == "42"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body)["code"] == "mismatching-upload-offset"
