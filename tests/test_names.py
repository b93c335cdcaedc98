"""Names: compare-and-swap, history, metadata, validation, and the races that matter.

One server (two in-process workers, each with its own event loop and database pool, over one
database) serves the whole module; every test works under a name prefix of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from yarl import URL

from casd.digests import lock_key
from tests.conftest import create_database
from tests.helpers import blob_path, digest_of, problem_of, random_bytes
from tests.inprocess import InProcessServer
from tests.name_helpers import (
    bearer,
    create_only,
    get_name,
    history,
    if_match,
    new_token,
    put_name,
    upload,
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[InProcessServer]:
    directory = tmp_path_factory.mktemp("names") / "data"
    instance = InProcessServer(
        directory, create_database(postgres_url, migrated=True), ["--workers", "2"]
    )
    yield instance.start()
    instance.stop()


@pytest.fixture(scope="module")
async def blobs(server: InProcessServer) -> AsyncIterator[list[str]]:
    """Four stored blobs to point names at."""
    async with aiohttp.ClientSession() as http:
        yield [await upload(http, server, server.admin_token, random_bytes(1000)) for _ in range(4)]


ADMIN_ACTOR = "token:1 (admin)"


async def test_create_read_update_delete(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "lifecycle/sle/image.qcow2"
    token = server.admin_token
    status, record, headers = await put_name(
        http, server, token, name, {"digest": blobs[0], "metadata": {"build": "1"}}, create_only()
    )
    assert status == 201
    assert headers["ETag"] == '"1"'
    assert headers["Location"] == f"/v1/names/{name}"
    assert record == {
        "name": name,
        "digest": blobs[0],
        "size": 1000,
        "version": 1,
        "metadata": {"build": "1"},
        "healthy": True,
        "updated_at": record["updated_at"],
        "updated_by": ADMIN_ACTOR,
    }
    assert record["updated_at"].endswith("Z")
    datetime.fromisoformat(record["updated_at"])

    async with http.get(f"{server.url}/v1/names/{name}") as response:
        assert response.status == 200
        assert response.headers["ETag"] == '"1"'
        assert await response.json() == record
    async with http.get(f"{server.url}/v1/names/{name}", headers={"If-None-Match": '"1"'}) as got:
        assert got.status == 304

    status, updated, headers = await put_name(
        http, server, token, name, {"digest": blobs[1]}, if_match(1)
    )
    assert status == 200
    assert headers["ETag"] == '"2"'
    assert (updated["version"], updated["digest"], updated["metadata"]) == (
        2,
        blobs[1],
        {"build": "1"},
    )

    async with http.delete(
        f"{server.url}/v1/names/{name}", headers={**bearer(token), **if_match(2)}
    ) as response:
        assert response.status == 204
    status, problem = await get_name(http, server, name)
    assert (status, problem["code"]) == (404, "name-not-found")

    entries = await history(http, server, name)
    assert [(e["version"], e["action"], e["digest"], e["previous_digest"]) for e in entries] == [
        (3, "delete", None, blobs[1]),
        (2, "update", blobs[1], blobs[0]),
        (1, "create", blobs[0], None),
    ]
    assert {e["actor"] for e in entries} == {ADMIN_ACTOR}
    assert [e["metadata"] for e in entries] == [None, {"build": "1"}, {"build": "1"}]
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    assert times == sorted(times, reverse=True)


async def test_preconditions(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "preconditions/image.qcow2"
    token = server.admin_token
    body = {"digest": blobs[0]}

    status, problem, _ = await put_name(http, server, token, name, body, {})
    assert (status, problem["code"]) == (428, "precondition-required")
    status, problem, _ = await put_name(http, server, token, name, body, if_match(1))
    assert (status, problem["code"], problem["current"]) == (412, "precondition-failed", None)
    status, created, _ = await put_name(http, server, token, name, body, create_only())
    assert status == 201

    status, problem, _ = await put_name(http, server, token, name, body, create_only())
    assert (status, problem["code"], problem["current"]) == (412, "precondition-failed", created)
    status, problem, _ = await put_name(
        http, server, token, name, {"digest": blobs[1]}, if_match(7)
    )
    assert (status, problem["current"]) == (412, created)
    # Weak tags never match If-Match (RFC 9110 strong comparison).
    status, problem, _ = await put_name(http, server, token, name, body, {"If-Match": 'W/"1"'})
    assert (status, problem["current"]) == (412, created)

    # A list of versions: any of them will do.
    status, record, _ = await put_name(
        http, server, token, name, {"digest": blobs[1]}, {"If-Match": '"5", "1"'}
    )
    assert (status, record["version"], record["digest"]) == (200, 2, blobs[1])
    # '*' is "whatever version it has now": still atomic, still recorded.
    status, record, _ = await put_name(
        http, server, token, name, {"digest": blobs[2]}, {"If-Match": "*"}
    )
    assert (status, record["version"]) == (200, 3)
    status, problem, _ = await put_name(
        http, server, token, "preconditions/missing", body, {"If-Match": "*"}
    )
    assert (status, problem["current"]) == (412, None)

    final = await get_name(http, server, name)
    assert final == (200, record)
    assert len(await history(http, server, name)) == 3


MALFORMED_PRECONDITIONS = [
    {"If-Match": "3"},
    {"If-Match": '"abc"'},
    {"If-Match": '""'},
    {"If-Match": '"1'},
    {"If-Match": ""},
    {"If-Match": '"1" "2"'},
    {"If-Match": '"-1"'},
    {"If-Match": '"99999999999999999999"'},
    {"If-None-Match": '"1"'},
    {"If-None-Match": "*", "If-Match": '"1"'},
]


@pytest.mark.parametrize("number", range(len(MALFORMED_PRECONDITIONS)))
async def test_malformed_preconditions_change_nothing(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str], number: int
) -> None:
    headers = MALFORMED_PRECONDITIONS[number]
    name = f"malformed/{number}"
    token = server.admin_token
    status, created, _ = await put_name(
        http, server, token, name, {"digest": blobs[0]}, create_only()
    )
    assert status == 201
    async with http.put(
        f"{server.url}/v1/names/{name}",
        json={"digest": blobs[1]},
        headers={**bearer(token), **headers},
    ) as response:
        problem = await problem_of(response)
        assert (response.status, problem["code"]) == (400, "invalid-request")
    async with http.delete(
        f"{server.url}/v1/names/{name}", headers={**bearer(token), **headers}
    ) as response:
        assert response.status == 400
    assert await get_name(http, server, name) == (200, created)


async def test_delete_needs_if_match_and_versions_continue_after_recreate(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "recreate/a"
    headers = bearer(server.admin_token)
    url = f"{server.url}/v1/names/{name}"
    await put_name(http, server, server.admin_token, name, {"digest": blobs[0]}, create_only())

    async with http.delete(url, headers=headers) as response:
        assert (await problem_of(response))["code"] == "precondition-required"
        assert response.status == 428
    async with http.delete(url, headers={**headers, **create_only()}) as response:
        assert response.status == 400
    async with http.delete(url, headers={**headers, **if_match(2)}) as response:
        problem = await problem_of(response)
        assert (response.status, problem["current"]["version"]) == (412, 1)
    async with http.delete(url, headers={**headers, **if_match(1)}) as response:
        assert response.status == 204
    async with http.delete(url, headers={**headers, **if_match(1)}) as response:
        problem = await problem_of(response)
        assert (response.status, problem["current"]) == (412, None)

    status, record, headers_ = await put_name(
        http, server, server.admin_token, name, {"digest": blobs[1]}, create_only()
    )
    assert (status, record["version"], headers_["ETag"]) == (201, 3, '"3"')
    assert record["metadata"] == {}
    actions = [(e["version"], e["action"]) for e in await history(http, server, name)]
    assert actions == [(3, "create"), (2, "delete"), (1, "create")]


async def test_metadata_kept_across_flips_and_replaced_when_given(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "metadata/sle/image.qcow2"
    token = server.admin_token
    first = {"build": "20240501", "tags": ["sle", "x86_64"], "note": "grün 🚀", "n": 1.5}
    await put_name(
        http, server, token, name, {"digest": blobs[0], "metadata": first}, create_only()
    )

    # New bytes, the name flipped: the metadata nobody asked to change stays.
    new_digest = await upload(http, server, token, random_bytes(2000))
    status, record, _ = await put_name(
        http, server, token, name, {"digest": new_digest}, if_match(1)
    )
    assert (status, record["digest"], record["metadata"], record["size"]) == (
        200,
        new_digest,
        first,
        2000,
    )

    second = {"build": "20240502"}
    status, record, _ = await put_name(
        http, server, token, name, {"digest": new_digest, "metadata": second}, if_match(2)
    )
    assert (status, record["metadata"]) == (200, second)
    status, record, _ = await put_name(
        http, server, token, name, {"digest": blobs[0], "metadata": {}}, if_match(3)
    )
    assert (status, record["metadata"]) == (200, {})

    entries = await history(http, server, name)
    assert [(e["version"], e["metadata"]) for e in entries] == [
        (4, {}),
        (3, second),
        (2, first),
        (1, first),
    ]


async def test_rollback_is_a_new_version(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "rollback/image.qcow2"
    token = server.admin_token
    await put_name(
        http, server, token, name, {"digest": blobs[0], "metadata": {"v": 1}}, create_only()
    )
    await put_name(
        http, server, token, name, {"digest": blobs[1], "metadata": {"v": 2}}, if_match(1)
    )
    good = (await history(http, server, name))[-1]
    status, record, _ = await put_name(
        http,
        server,
        token,
        name,
        {"digest": good["digest"], "metadata": good["metadata"]},
        if_match(2),
    )
    assert (status, record["version"], record["digest"], record["metadata"]) == (
        200,
        3,
        blobs[0],
        {"v": 1},
    )
    latest = (await history(http, server, name))[0]
    assert (latest["action"], latest["digest"], latest["previous_digest"]) == (
        "update",
        blobs[0],
        blobs[1],
    )


BAD_NAMES = [
    ".",
    "..",
    "a/..",
    "a/../b",
    "a/./b",
    "a//b",
    "/a",
    "a/",
    "-a",
    ".hidden",
    "_a",
    "a/_b",
    "a%20b",
    "caf%C3%A9",
    "a%00",
    "a%2F",
    "a/%2E%2E/b",
    "a/%2E/b",
    "%2E%2E",
    "a:b",
    "a*b",
    "a~b",
    "a%25b",
    "a%5Cb",
    "x" * 513,
    "a/" + "b" * 511,
]


async def test_bad_names_are_refused_everywhere(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    connection = await server.connect_db()
    try:
        before = await connection.fetchval("SELECT count(*) FROM name_history")
        headers = {**bearer(server.admin_token), **create_only()}
        for raw in BAD_NAMES:
            # encoded=True: the client must not tidy '..' or '//' away before the server sees it.
            for kind, path in (("names", "/v1/names/"), ("history", "/v1/history/")):
                url = URL(f"{server.url}{path}{raw}", encoded=True)
                async with http.get(url) as response:
                    problem = await problem_of(response)
                    assert (response.status, problem["code"]) == (400, "invalid-name"), (kind, raw)
            url = URL(f"{server.url}/v1/names/{raw}", encoded=True)
            async with http.put(url, json={"digest": blobs[0]}, headers=headers) as response:
                assert (response.status, (await problem_of(response))["code"]) == (
                    400,
                    "invalid-name",
                ), raw
            async with http.delete(url, headers={**headers, **if_match(1)}) as response:
                assert response.status == 400, raw
        assert await connection.fetchval("SELECT count(*) FROM name_history") == before
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "name",
    ["x" * 512, "a/" + "b" * 510, "a..b/c.d_e+f@g-h", "A0/9z", "openqa/sle-15-SP6/x86_64@1+2"],
)
async def test_names_at_the_edges_of_the_rules(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str], name: str
) -> None:
    status, record, _ = await put_name(
        http, server, server.admin_token, name, {"digest": blobs[0]}, create_only()
    )
    assert (status, record["name"]) == (201, name)
    assert await get_name(http, server, name) == (200, record)


def bad_bodies(digest: str, unknown: str) -> list[tuple[bytes | dict[str, Any], int, str]]:
    quoted = f'"{digest}"'
    return [
        (b"{", 400, "invalid-request"),
        (b"", 400, "invalid-request"),
        (b"[]", 400, "invalid-request"),
        (quoted.encode(), 400, "invalid-request"),
        (b"\xff\xff", 400, "invalid-request"),
        ({}, 400, "invalid-digest"),
        ({"digest": None}, 400, "invalid-digest"),
        ({"digest": 5}, 400, "invalid-digest"),
        ({"digest": "sha256:" + "0" * 64}, 400, "invalid-digest"),
        ({"digest": digest.upper()}, 400, "invalid-digest"),
        ({"digest": digest + "0"}, 400, "invalid-digest"),
        ({"digest": unknown}, 422, "unknown-blob"),
        ({"digest": digest, "metadata": None}, 400, "invalid-request"),
        ({"digest": digest, "metadata": []}, 400, "invalid-request"),
        ({"digest": digest, "metadata": "x"}, 400, "invalid-request"),
        ({"digest": digest, "metdata": {}}, 400, "invalid-request"),
        (f'{{"digest": {quoted}, "metadata": {{"x": NaN}}}}'.encode(), 400, "invalid-request"),
        (f'{{"digest": {quoted}, "metadata": {{"x": 1e999}}}}'.encode(), 400, "invalid-request"),
        (
            f'{{"digest": {quoted}, "metadata": {{"x": "a\\u0000"}}}}'.encode(),
            400,
            "invalid-request",
        ),
        (f'{{"digest": {quoted}, "metadata": {{"\\u0000": 1}}}}'.encode(), 400, "invalid-request"),
        (
            f'{{"digest": {quoted}, "metadata": {{"x": "\\ud800"}}}}'.encode(),
            400,
            "invalid-request",
        ),
        (
            f'{{"digest": {quoted}, "metadata": {{"x": {"9" * 5000}}}}}'.encode(),
            400,
            "invalid-request",
        ),
        (
            f'{{"digest": {quoted}, "metadata": {{"x": '.encode()
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}",
            400,
            "invalid-request",
        ),
        ({"digest": digest, "metadata": {"x": "a" * 300_000}}, 413, "payload-too-large"),
    ]


async def test_bad_bodies_change_nothing(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "bodies/image.qcow2"
    token = server.admin_token
    _, created, _ = await put_name(
        http, server, token, name, {"digest": blobs[0], "metadata": {"keep": True}}, create_only()
    )
    unknown = digest_of(b"never uploaded")
    for body, status, code in bad_bodies(blobs[1], unknown):
        for condition in (if_match(1), create_only()):
            target = name if condition == if_match(1) else "bodies/new"
            got, problem, _ = await put_name(http, server, token, target, body, condition)
            assert (got, problem.get("code")) == (status, code), (
                body if isinstance(body, dict) else body[:80]
            )
    assert await get_name(http, server, name) == (200, created)
    assert (await get_name(http, server, "bodies/new"))[0] == 404
    assert len(await history(http, server, name)) == 1


async def test_unhealthy_blobs(server: InProcessServer, http: aiohttp.ClientSession) -> None:
    token = server.admin_token
    digest = await upload(http, server, token, random_bytes(3000))
    name = "unhealthy/image.qcow2"
    await put_name(http, server, token, name, {"digest": digest}, create_only())
    connection = await server.connect_db()
    try:
        for state in ("quarantined", "missing"):
            await connection.execute(
                "UPDATE blobs SET status = $2 WHERE digest = $1", digest, state
            )
            status, record = await get_name(http, server, name)
            assert (status, record["healthy"], record["digest"]) == (200, False, digest)
            status, problem, _ = await put_name(
                http, server, token, "unhealthy/other", {"digest": digest}, create_only()
            )
            assert (status, problem["code"]) == (422, "unknown-blob")
            status, problem, _ = await put_name(
                http, server, token, name, {"digest": digest}, if_match(1)
            )
            assert (status, problem["code"]) == (422, "unknown-blob")
        # A re-upload heals the blob; the name is healthy again.
        await connection.execute("UPDATE blobs SET status = 'ok' WHERE digest = $1", digest)
    finally:
        await connection.close()
    assert (await get_name(http, server, name))[1]["healthy"] is True


async def list_page(
    http: aiohttp.ClientSession, server: InProcessServer, **params: Any
) -> tuple[int, dict[str, Any]]:
    query = {key: str(value) for key, value in params.items()}
    async with http.get(f"{server.url}/v1/names", params=query) as response:
        return response.status, await response.json(content_type=None)


async def test_listing_pages_by_literal_prefix(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    token = server.admin_token
    wanted = sorted(f"list/a_b/{n:02d}" for n in range(25))
    decoys = ["list/axb/1", "list/a_", "list/a_bc", "list/A_b/1", "lisT/a_b/1"]
    await asyncio.gather(
        *(
            put_name(http, server, token, name, {"digest": blobs[0]}, create_only())
            for name in wanted + decoys
        )
    )
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        status, page = await list_page(http, server, prefix="list/a_b/", limit=10, after=after)
        assert status == 200
        seen += [record["name"] for record in page["names"]]
        pages += 1
        if page["next"] is None:
            break
        assert page["next"] == seen[-1]
        after = page["next"]
    assert (seen, pages) == (wanted, 3)

    status, page = await list_page(http, server, prefix="list/a_")
    assert [r["name"] for r in page["names"]] == ["list/a_", *wanted, "list/a_bc"]
    assert page["names"][0] == (await get_name(http, server, "list/a_"))[1]
    status, page = await list_page(http, server, prefix="list/a_b/", limit=25)
    assert (len(page["names"]), page["next"]) == (25, None)
    status, page = await list_page(http, server, prefix="list/a_b/", limit=24)
    assert page["next"] == wanted[23]
    status, page = await list_page(http, server, prefix="list/nothing/")
    assert (status, page) == (200, {"names": [], "next": None})
    status, page = await list_page(http, server, prefix="list/a_b/", limit=1000)
    assert len(page["names"]) == 25

    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": -1},
        {"limit": "ten"},
        {"prefix": "list/%"},
        {"prefix": "a\x00"},
        {"prefix": "x" * 513},
        {"after": "a b"},
    ):
        status, problem = await list_page(http, server, **params)
        assert (status, problem["code"]) == (400, "invalid-request"), params


async def test_history_pages_and_unknown_names(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    name = "history/image.qcow2"
    token = server.admin_token
    await put_name(http, server, token, name, {"digest": blobs[0]}, create_only())
    for version in range(1, 12):
        await put_name(http, server, token, name, {"digest": blobs[version % 4]}, if_match(version))
    entries = await history(http, server, name, limit=5)
    assert [e["version"] for e in entries] == list(range(12, 0, -1))
    async with http.get(f"{server.url}/v1/history/{name}", params={"before": "4"}) as response:
        page = await response.json()
    assert ([e["version"] for e in page["history"]], page["next"]) == ([3, 2, 1], None)
    async with http.get(f"{server.url}/v1/history/{name}", params={"before": "1"}) as response:
        assert (response.status, await response.json()) == (200, {"history": [], "next": None})

    async with http.get(f"{server.url}/v1/history/history/never") as response:
        assert (response.status, (await problem_of(response))["code"]) == (404, "name-not-found")
    for params in ({"limit": "0"}, {"limit": "1001"}, {"before": "0"}, {"before": "x"}):
        async with http.get(f"{server.url}/v1/history/{name}", params=params) as response:
            assert (response.status, (await problem_of(response))["code"]) == (
                400,
                "invalid-request",
            )


async def test_cas_storm(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    """32 clients each do 50 read-then-If-Match flips of one name: every success is one version
    of the history, in order, with no gaps and nothing lost."""
    clients, rounds = 32, 50
    name = "storm/sle/image.qcow2"
    token = server.admin_token
    await put_name(http, server, token, name, {"digest": blobs[0]}, create_only())

    async def client(number: int) -> list[tuple[int, str, dict[str, int]]]:
        wins = []
        for round_ in range(rounds):
            status, current = await get_name(http, server, name)
            assert status == 200
            digest = blobs[(number + round_) % len(blobs)]
            metadata = {"client": number, "round": round_}
            status, body, headers = await put_name(
                http,
                server,
                token,
                name,
                {"digest": digest, "metadata": metadata},
                if_match(current["version"]),
            )
            if status == 200:
                # Written on top of exactly the version it read: no update was lost.
                assert body["version"] == current["version"] + 1
                assert headers["ETag"] == f'"{body["version"]}"'
                wins.append((body["version"], digest, metadata))
            else:
                assert (status, body["code"]) == (412, "precondition-failed"), body
                assert body["current"]["version"] > current["version"]
        return wins

    async with asyncio.timeout(240):
        results = await asyncio.gather(*(client(number) for number in range(clients)))
    wins = sorted(win for result in results for win in result)
    _status, final = await get_name(http, server, name)
    assert len(wins) == final["version"] - 1
    assert [version for version, _, _ in wins] == list(range(2, final["version"] + 1))

    entries = await history(http, server, name, limit=1000)
    assert [e["version"] for e in entries] == list(range(final["version"], 0, -1))
    recorded = {e["version"]: (e["version"], e["digest"], e["metadata"]) for e in entries}
    assert [recorded[version] for version, _, _ in wins] == wins
    chain = list(reversed(entries))
    for before, after in itertools.pairwise(chain):
        assert after["previous_digest"] == before["digest"]
    assert final["digest"] == (wins[-1][1] if wins else blobs[0])


async def test_concurrent_creates_and_deletes(
    server: InProcessServer, http: aiohttp.ClientSession, blobs: list[str]
) -> None:
    """Clients racing to create, update and delete one name: every success is in the history
    exactly once, versions continue across deletes without gaps, nothing fails otherwise."""
    name = "churn/image.qcow2"
    token = server.admin_token
    outcomes: Counter[tuple[str, int]] = Counter()

    async def client(number: int) -> None:
        rng = random.Random(number)
        for _ in range(25):
            status, current = await get_name(http, server, name)
            digest = rng.choice(blobs)
            if status == 404:
                status, _, _ = await put_name(
                    http, server, token, name, {"digest": digest}, create_only()
                )
                outcomes["create", status] += 1
            elif rng.random() < 0.3:
                async with http.delete(
                    f"{server.url}/v1/names/{name}",
                    headers={**bearer(token), **if_match(current["version"])},
                ) as response:
                    outcomes["delete", response.status] += 1
            else:
                status, _, _ = await put_name(
                    http, server, token, name, {"digest": digest}, if_match(current["version"])
                )
                outcomes["update", status] += 1

    async with asyncio.timeout(180):
        await asyncio.gather(*(client(number) for number in range(12)))
    assert set(outcomes) <= {
        ("create", 201),
        ("create", 412),
        ("delete", 204),
        ("delete", 412),
        ("update", 200),
        ("update", 412),
    }, outcomes
    entries = list(reversed(await history(http, server, name, limit=1000)))
    assert [e["version"] for e in entries] == list(range(1, len(entries) + 1))
    actions = Counter(e["action"] for e in entries)
    assert actions == Counter(
        {
            "create": outcomes["create", 201],
            "update": outcomes["update", 200],
            "delete": outcomes["delete", 204],
        }
    )
    for before, after in itertools.pairwise(entries):
        assert (after["action"] == "create") == (before["action"] == "delete")
        assert after["previous_digest"] == before["digest"]


async def test_openqa_investigations_cannot_touch_production(
    server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    production, first, second = await asyncio.gather(
        new_token(server, "prod", label="production"),
        new_token(server, "investigate/1", label="investigation 1"),
        new_token(server, "investigate/2", label="investigation 2"),
    )
    asset = "sle/image.qcow2"
    production_name = f"prod/{asset}"
    release = random_bytes(512 * 1024)
    release_digest = await upload(http, server, production, release)
    status, _created, _ = await put_name(
        http, server, production, production_name, {"digest": release_digest}, create_only()
    )
    assert status == 201
    update = random_bytes(256 * 1024)

    async def production_flip() -> str:
        digest = await upload(http, server, production, update)
        status, _record, _ = await put_name(
            http, server, production, production_name, {"digest": digest}, if_match(1)
        )
        assert status == 200
        return digest

    async def investigate(token: str, number: int) -> str:
        digest = await upload(http, server, token, random_bytes(300 * 1024))
        for target in (
            production_name,
            f"investigate/{3 - number}/{asset}",
            f"investigate/{number}1/{asset}",
            f"investigate/{number}x/{asset}",
            f"investigate/{asset}",
        ):
            for condition in (create_only(), if_match(1)):
                status, problem, _ = await put_name(
                    http, server, token, target, {"digest": digest}, condition
                )
                assert (status, problem["code"]) == (403, "forbidden"), target
            async with http.delete(
                f"{server.url}/v1/names/{target}", headers={**bearer(token), **if_match(1)}
            ) as response:
                assert (response.status, (await problem_of(response))["code"]) == (403, "forbidden")
        mine = f"investigate/{number}/{asset}"
        status, record, _ = await put_name(
            http, server, token, mine, {"digest": digest}, create_only()
        )
        assert (status, record["digest"]) == (201, digest)
        return digest

    flipped, first_digest, second_digest = await asyncio.gather(
        production_flip(), investigate(first, 1), investigate(second, 2)
    )
    assert len({flipped, first_digest, second_digest}) == 3

    status, record = await get_name(http, server, production_name)
    assert (record["digest"], record["version"]) == (flipped, 2)
    assert "production" in record["updated_by"]
    async with http.get(f"{server.url}/v1/blobs/{record['digest']}") as response:
        assert digest_of(await response.read()) == flipped
    assert [
        (e["version"], "production" in e["actor"])
        for e in await history(http, server, production_name)
    ] == [
        (2, True),
        (1, True),
    ]
    for number, digest in ((1, first_digest), (2, second_digest)):
        status, record = await get_name(http, server, f"investigate/{number}/{asset}")
        assert (record["digest"], f"investigation {number}" in record["updated_by"]) == (
            digest,
            True,
        )
    for target in (f"investigate/11/{asset}", f"investigate/1x/{asset}", f"investigate/{asset}"):
        assert (await get_name(http, server, target))[0] == 404


async def test_name_put_racing_blob_removal(
    server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """A stand-in for the collector removes the bytes and the row of unreferenced blobs under the
    blob's exclusive lock, while a client names the blob: either the name exists and so do the
    blob's row and bytes, or the PUT was refused with 422 and the blob is gone."""
    token = server.admin_token
    connection = await server.connect_db()
    outcomes: Counter[int] = Counter()

    async def collect(digest: str) -> bool:
        await asyncio.sleep(random.uniform(0, 0.005))
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_key(digest))
            if await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM names WHERE digest = $1)", digest
            ):
                return False
            # Bytes first, then the row: a collector racing an unlocked writer would leave a
            # name whose bytes are gone (its row delete then fails on the foreign key).
            blob_path(server.data_dir, digest).unlink()
            await connection.execute("DELETE FROM blobs WHERE digest = $1", digest)
            return True

    async def name_it(name: str, digest: str) -> int:
        await asyncio.sleep(random.uniform(0, 0.005))
        status, _, _ = await put_name(http, server, token, name, {"digest": digest}, create_only())
        return status

    try:
        async with asyncio.timeout(120):
            for round_ in range(40):
                digest = await upload(http, server, token, random_bytes(4096))
                name = f"race/{round_}"
                collected, status = await asyncio.gather(collect(digest), name_it(name, digest))
                outcomes[status] += 1
                assert status in (201, 422)
                assert collected == (status == 422)
                row = await connection.fetchrow(
                    "SELECT status FROM blobs WHERE digest = $1", digest
                )
                if status == 201:
                    assert row is not None and row["status"] == "ok"
                    assert blob_path(server.data_dir, digest).exists()
                    assert (await get_name(http, server, name))[1]["healthy"] is True
                else:
                    assert row is None
                    assert (await get_name(http, server, name))[0] == 404
        dangling = await connection.fetchval(
            "SELECT count(*) FROM names n LEFT JOIN blobs b USING (digest)"
            " WHERE n.name LIKE 'race/%' AND b.status IS DISTINCT FROM 'ok'"
        )
        assert dangling == 0
    finally:
        await connection.close()
    print("race outcomes", dict(outcomes))
