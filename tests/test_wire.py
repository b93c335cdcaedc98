"""The wire module: one table of problem codes for the server, the client and the OpenAPI
description; records that the server writes and the client reads, tolerant of members added by
a newer server and of optional members an older one lacks."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest
import yaml

from casd import errors, wire
from casd.auth import Token
from casd.client.errors import UnexpectedAnswer, error_class, error_from_problem
from casd.client.records import parsed
from casd.names import HistoryEntry, NameRecord
from casd.policies import Policy

DIGEST = "blake3:" + "ab" * 32
MOMENT = datetime(2026, 11, 29, 12, 30, tzinfo=UTC)


def coded_errors() -> list[type[errors.CasdError]]:
    """The classes of casd.errors that declare a code of their own."""
    return [
        kind
        for _, kind in inspect.getmembers(errors, inspect.isclass)
        if issubclass(kind, errors.CasdError) and "code" in kind.__dict__
    ]


def test_every_error_class_answers_with_the_status_and_title_of_its_code() -> None:
    declared = coded_errors()
    assert sorted(kind.code for kind in declared) == sorted(wire.PROBLEMS)
    for kind in declared:
        assert (kind.status, kind.title) == wire.PROBLEMS[kind.code], kind.__name__
        error = kind("detail")
        assert (error.status, error.code) == (wire.PROBLEMS[kind.code].status, kind.code)


def test_the_client_reads_every_code_as_the_server_raises_it() -> None:
    for kind in coded_errors():
        assert error_class(kind.code) is kind
        if kind.status in (408, 429):
            continue  # retried: read as Unavailable (below)
        body = {"type": "about:blank", "title": kind.title, "status": kind.status}
        error = error_from_problem(kind.status, body | {"detail": "x", "code": kind.code}, {})
        assert (type(error), error.code, error.status, error.detail) == (
            kind,
            kind.code,
            kind.status,
            "x",
        )
    for code, status in (("too-many-uploads", 429), ("request-timeout", 408)):
        problem = {"code": code, "status": status, "detail": "later"}
        assert isinstance(error_from_problem(status, problem, {}), errors.Unavailable)
    unknown = error_from_problem(418, {"code": "new-in-v2", "detail": "?"}, {})
    assert (type(unknown), unknown.code, unknown.status) == (errors.CasdError, "new-in-v2", 418)


def test_openapi_lists_the_codes_of_the_wire_table() -> None:
    text = resources.files("casd").joinpath("openapi.yaml").read_text()
    schemas = yaml.safe_load(text)["components"]["schemas"]
    listed = set(schemas["Problem"]["properties"]["code"]["enum"])
    assert listed <= set(wire.PROBLEMS)
    assert set(wire.PROBLEMS) - listed <= {"internal-error"}


def test_server_records_are_written_through_the_wire_shapes() -> None:
    record = NameRecord("a/b", DIGEST, 3, 2, {"k": "v"}, True, MOMENT, "token:1 (ci)")
    body = record.as_dict()
    assert body["updated_at"] == "2026-11-29T12:30:00.000000Z"
    assert wire.NameRecord.from_json(body).to_json() == body
    assert list(body) == [member for member in wire.NameRecord.__dataclass_fields__]

    entry = HistoryEntry(2, "update", DIGEST, None, {}, "token:1", MOMENT, "src/x", 4)
    body = entry.as_dict()
    assert body["source"] == {"name": "src/x", "version": 4}
    assert wire.HistoryEntry.from_json(body).to_json() == body

    token = Token(7, "ci", ("builds",), created_at=MOMENT, read_prefixes=("a", "b"))
    body = token.as_dict()
    assert (body["admin"], body["read_prefixes"], body["rights"]) == (False, ["a", "b"], [])
    assert wire.TokenInfo.from_json(body).to_json() == body

    policy = Policy("builds", protected=True, quota_bytes=10, updated_at=MOMENT)
    assert wire.PolicyRecord.from_json(policy.as_dict()).to_json() == policy.as_dict()


NEWER: dict[str, Any] = {
    "name": "a/b",
    "digest": DIGEST,
    "size": 3,
    "version": 2,
    "metadata": {},
    "healthy": False,
    "updated_at": "2026-11-29T12:30:00.000000Z",
    "updated_by": "token:1",
    "labels": ["from", "a", "newer", "server"],
    "owner": {"team": "ci"},
}


def test_members_a_newer_server_adds_are_ignored() -> None:
    record = parsed(wire.NameRecord, NEWER)
    assert (record.name, record.version, record.healthy) == ("a/b", 2, False)
    assert "labels" not in record.to_json()


def test_optional_members_an_older_server_lacks_take_their_defaults() -> None:
    older = {key: NEWER[key] for key in ("name", "digest", "size", "version")}
    record = parsed(wire.NameRecord, older)
    assert (record.metadata, record.healthy, record.updated_at) == ({}, True, None)
    entry = parsed(wire.HistoryEntry, {"version": 1, "action": "create", "digest": DIGEST})
    assert (entry.source, entry.previous_digest, entry.actor) == (None, None, "")
    token = parsed(wire.TokenInfo, {"id": 3, "write_prefixes": ["a"], "admin": False})
    assert (token.read_prefixes, token.rights, token.used_bytes) == (None, [], 0)


@pytest.mark.parametrize(
    ("shape", "body"),
    [
        (wire.NameRecord, {"name": "a", "digest": DIGEST, "size": 1}),
        (wire.HistoryEntry, {"version": 1}),
        (wire.Blob, {"size": 1}),
        (wire.TokenInfo, {"label": "no id"}),
        (wire.NameRecord, ["not", "an", "object"]),
        (wire.UploadSummary, None),
    ],
)
def test_an_answer_without_a_required_member_is_an_unexpected_answer(
    shape: type[wire.Shape], body: Any
) -> None:
    with pytest.raises(UnexpectedAnswer) as raised:
        parsed(shape, body)
    assert raised.value.code == "unexpected-answer"


def test_prefix_covers_at_segment_boundaries() -> None:
    assert wire.prefix_covers("", "anything/at/all")
    assert wire.prefix_covers("investigate/5555252", "investigate/5555252/x.qcow2")
    assert wire.prefix_covers("investigate/5555252/", "investigate/5555252")
    assert not wire.prefix_covers("investigate/5555252", "investigate/55552520/x")


def test_variants_of_a_code_keep_their_own_status() -> None:
    unsatisfiable = errors.RangeNotSatisfiable
    assert (unsatisfiable.status, unsatisfiable.code) == (416, "invalid-request")
    assert (errors.RouteNotFound.status, errors.RouteNotFound.code) == (404, "invalid-request")


def test_admin_commands_read_records_of_older_and_newer_servers() -> None:
    from casd.cli_admin import as_shape, policy_line, token_line, token_row

    older_token = {"id": 3, "label": "ci", "write_prefixes": ["builds"], "future": True}
    row = token_row(as_shape(wire.TokenInfo, older_token))
    assert (row["read"], row["rights"], row["quota_bytes"]) == (None, [], None)
    assert token_line(row) == "3\tactive\tci\twrite: 'builds'"
    older_policy = {"prefix": "prod", "protected": True, "future": {"x": 1}}
    assert policy_line(as_shape(wire.PolicyRecord, older_policy)) == "prod\tprotected"
