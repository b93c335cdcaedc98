"""The OpenAPI description: valid, complete, served, and true of a real server (schemathesis)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from casd.http.app import setup_routes
from casd.http.openapi import description
from tests.helpers import problem_of
from tests.inprocess import InProcessServer
from tests.name_helpers import bearer, create_only, put_name, upload

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "schemathesis"
# Bounds of the schemathesis run: examples per operation and seconds for the whole run.
MAX_EXAMPLES = 5
MAX_SECONDS = 45
# Seldom, a schemathesis worker thread dies of a CPython 3.11 fault in building ASTs while
# hypothesis describes a lambda (gh-106905, seen once in a dozen runs); that run says nothing
# about casd and is repeated once.
INTERPRETER_FAULT = "AST constructor recursion depth mismatch"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]
# The pages for people are described by the API reference page, not by the API description.
_DESCRIBED = re.compile(r"^/(v1/.*|healthz|readyz|metrics)$")


def test_the_description_is_valid_openapi_3_1() -> None:
    validate(description())
    assert description()["openapi"].startswith("3.1")


def described_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in description()["paths"].items()
        for method in item
        if method in {"get", "head", "post", "put", "patch", "delete"}
    }


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every API route, less the HEADs aiohttp adds to each GET."""
    app = web.Application()
    setup_routes(app)
    handlers = {}
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", canonical)
        if _DESCRIBED.match(path) and route.method != "*":
            handlers[(route.method, path)] = route.handler
    return {
        (method, path)
        for (method, path), handler in handlers.items()
        if not (method == "HEAD" and handlers.get(("GET", path)) is handler)
    }


def test_every_endpoint_the_server_serves_is_described() -> None:
    served = served_routes()
    assert ("GET", "/v1/names/{name}") in served
    assert served == described_routes()


def test_every_problem_code_is_described() -> None:
    import casd.errors

    codes = {
        value.code
        for value in vars(casd.errors).values()
        if isinstance(value, type) and issubclass(value, casd.errors.CasdError)
    }
    described = set(description()["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    assert codes <= described


async def test_the_server_serves_the_description(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{module_http_server.url}/v1/openapi.json") as answer:
        assert answer.status == 200
        assert answer.content_type == "application/json"
        assert await answer.json() == description()


async def test_a_name_path_with_a_line_break_is_an_invalid_name(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Found by schemathesis: such paths were answered 404 'no resource' (the route's pattern
    stopped at the line break) instead of 400 invalid-name."""
    token = bearer(module_http_server.admin_token)
    for method, path in [
        ("GET", "/v1/names/a%0Ab"),
        ("PUT", "/v1/names/a%0Ab"),
        ("DELETE", "/v1/names/a%0Ab"),
        ("GET", "/v1/history/a%0Ab"),
    ]:
        url = f"{module_http_server.url}{path}"
        async with http.request(method, url, headers=token, json={}) as answer:
            assert answer.status == 400, (method, path)
            assert (await problem_of(answer))["code"] == "invalid-name"


async def test_a_policy_path_with_a_line_break_is_an_invalid_name(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Found by schemathesis: as for names, such paths were answered 404 'no resource'."""
    token = bearer(module_http_server.admin_token)
    for method in ["GET", "PUT", "DELETE"]:
        url = f"{module_http_server.url}/v1/policies/a%0Ab"
        async with http.request(method, url, headers=token, json={}) as answer:
            assert answer.status == 400, method
            assert (await problem_of(answer))["code"] == "invalid-name"


async def test_a_policy_put_beside_its_delete_answers_what_it_stored(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Found by schemathesis (two workers): a PUT of a policy whose prefix another request
    deleted between the PUT's write and its read answered 404 policy-not-found."""
    token = bearer(module_http_server.admin_token)
    url = f"{module_http_server.url}/v1/policies/race/prefix"

    async def put() -> int:
        async with http.put(url, headers=token, json={"protected": True}) as answer:
            if answer.status in (200, 201):
                assert (await answer.json())["protected"] is True
            return answer.status

    async def delete() -> int:
        async with http.delete(url, headers=token) as answer:
            return answer.status

    for _ in range(20):
        statuses = await asyncio.gather(*(step() for _ in range(8) for step in (put, delete)))
        assert set(statuses[0::2]) <= {200, 201}, statuses
        assert set(statuses[1::2]) <= {204, 404}, statuses


async def test_an_empty_expect_header_expects_nothing(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Found by schemathesis: ``POST /v1/blobs`` with ``Expect:`` (empty) was refused with 417
    while ``PUT`` stored the blob; both store it now."""
    headers = {**bearer(module_http_server.admin_token), "Expect": ""}
    async with http.post(
        f"{module_http_server.url}/v1/blobs", data=b"posted", headers=headers
    ) as a:
        assert a.status in (200, 201)
        assert (await a.json())["size"] == 6


@pytest.mark.e2e  # schemathesis runs as a process of its own
@pytest.mark.slow
async def test_schemathesis_finds_the_server_true_to_its_description(
    http_server: InProcessServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Every described operation, with generated valid and invalid data (bounded in examples
    and time): no server error, only described statuses, headers and bodies, and invalid data
    refused."""
    server = http_server
    token = server.admin_token
    digest = await upload(http, server, token, b"")
    await put_name(http, server, token, "prod/disk.qcow2", {"digest": digest}, create_only())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{server.url}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_SECONDS),
        "--seed",
        "14",
        "--workers",
        "2",
        "--generation-database",
        "none",
        # Revoking tokens would revoke the run's own token at the first try (id 1) and leave
        # the rest of the run unauthorized; tests/test_tokens*.py cover revocation.
        "--exclude-operation-id",
        "revokeToken",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(ARTIFACTS),
    ]
    returncode, text = await run_schemathesis(command)
    if INTERPRETER_FAULT in text:  # not about casd: once more (CPython gh-106905, see above)
        returncode, text = await run_schemathesis(command)
    (ARTIFACTS / "output.txt").write_text(text)
    assert returncode == 0, text[-6000:]
    covered = re.search(r"Selected: (\d+)/\d+\s+Tested: (\d+)", text)
    assert covered and covered[1] == covered[2], "every operation is tested within the bounds"
    unhandled = [record for record in caplog.records if "unhandled error" in record.message]
    assert not unhandled, unhandled[0].getMessage()


async def run_schemathesis(command: list[str]) -> tuple[int, str]:
    """The exit status and output of one schemathesis run, within its time budget."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), MAX_SECONDS + 120)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail("schemathesis ran past its time budget")
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
