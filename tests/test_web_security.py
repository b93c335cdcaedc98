"""The pages' defences, over plain HTTP: the token cookie, cross-site forms, private servers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import pytest

from tests.conftest import AnyServer, HttpServerFactory
from tests.inprocess import InProcessServer
from tests.name_helpers import create_only, if_match, put_name, upload


@pytest.fixture
async def cookie_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies of 127.0.0.1 (aiohttp ignores cookies of IP hosts unless
    told otherwise), as a browser does."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def two_versions(http: aiohttp.ClientSession, server: AnyServer, name: str) -> str:
    token = server.admin_token
    first = await upload(http, server, token, b"one")
    second = await upload(http, server, token, b"two")
    await put_name(http, server, token, name, {"digest": first}, create_only())
    await put_name(http, server, token, name, {"digest": second}, if_match(1))
    return first


async def sign_in(session: aiohttp.ClientSession, server: AnyServer) -> str:
    """Sign in as the admin; return the form token of the name page."""
    form = {"token": server.admin_token, "next": "/ops"}
    async with session.post(
        f"{server.url}/login", data=form, headers={"Origin": server.url}, allow_redirects=False
    ) as answer:
        assert answer.status == 303
        assert answer.headers["Location"] == "/ops"
        cookie = SimpleCookie(answer.headers["Set-Cookie"])["casd_token"]
        assert cookie.value == server.admin_token
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/"
        assert not cookie["secure"]  # plain HTTP; over TLS the cookie is Secure
        assert server.admin_token not in answer.headers["Location"]
    async with session.get(f"{server.url}/names/web/disk.qcow2") as page:
        html = await page.text()
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match is not None
    return match.group(1)


def rollback_form(csrf: str) -> dict[str, str]:
    return {"csrf": csrf, "name": "web/disk.qcow2", "version": "1", "expected": "2"}


async def version_of(http: aiohttp.ClientSession, server: AnyServer) -> int:
    async with http.get(f"{server.url}/v1/names/web/disk.qcow2") as answer:
        version: int = (await answer.json())["version"]
        return version


async def test_page_writes_need_the_form_token_and_this_origin(
    module_http_server: InProcessServer,
    http: aiohttp.ClientSession,
    cookie_session: aiohttp.ClientSession,
) -> None:
    server = module_http_server
    await two_versions(http, server, "web/disk.qcow2")
    csrf = await sign_in(cookie_session, server)
    url = f"{server.url}/rollback"
    refusals = [
        (rollback_form(""), {"Origin": server.url}),  # no form token
        (rollback_form("0" * 64), {"Origin": server.url}),  # a wrong one
        (rollback_form(csrf), {"Origin": "http://evil.example"}),  # another site's page
        (rollback_form(csrf), {"Origin": "null"}),  # an opaque origin
        (rollback_form(csrf), {"Referer": "http://evil.example/page"}),
    ]
    for form, headers in refusals:
        async with cookie_session.post(
            url, data=form, headers=headers, allow_redirects=False
        ) as answer:
            assert answer.status == 403, (form, headers)
            assert "text/html" in answer.headers["Content-Type"]
    assert await version_of(http, server) == 2

    async with cookie_session.post(
        url, data=rollback_form(csrf), headers={"Origin": server.url}, allow_redirects=False
    ) as answer:
        assert answer.status == 303
        assert answer.headers["Location"] == "/names/web/disk.qcow2?done=rollback"
    assert await version_of(http, server) == 3


async def test_a_rollback_without_a_signed_in_browser_is_refused(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    await two_versions(http, module_http_server, "web/anonymous")
    form = {"csrf": "", "name": "web/anonymous", "version": "1", "expected": "2"}
    async with http.post(f"{module_http_server.url}/rollback", data=form) as answer:
        assert answer.status == 401


async def test_sign_in_from_another_site_is_refused(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    form = {"token": module_http_server.admin_token, "next": "/"}
    async with http.post(
        f"{module_http_server.url}/login",
        data=form,
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    ) as answer:
        assert answer.status == 403
        assert "Set-Cookie" not in answer.headers


async def test_sign_in_goes_back_only_to_this_server(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    for target in ["//evil.example/", "http://evil.example/", "/\\evil.example"]:
        form = {"token": module_http_server.admin_token, "next": target}
        async with http.post(
            f"{module_http_server.url}/login", data=form, allow_redirects=False
        ) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/"


async def test_pages_of_a_private_server_need_the_cookie(
    http_server_factory: HttpServerFactory,
    http: aiohttp.ClientSession,
    cookie_session: aiohttp.ClientSession,
) -> None:
    server = http_server_factory("--private")
    first = await two_versions(http, server, "web/disk.qcow2")
    pages = ["/", "/?prefix=web/", "/names/web/disk.qcow2", f"/blobs/{first}", "/ops"]
    for path in [*pages, f"/download/{first}"]:
        async with http.get(f"{server.url}{path}", allow_redirects=False) as answer:
            assert answer.status == 303, path
            assert answer.headers["Location"].startswith("/login?next=")
    async with http.get(f"{server.url}/v1/openapi.json") as answer:
        assert answer.status == 200  # the description holds no data
    await sign_in(cookie_session, server)
    for path in pages:
        async with cookie_session.get(f"{server.url}{path}") as answer:
            assert answer.status == 200, path
            assert "signed in as token:1 (admin)" in await answer.text()
    async with cookie_session.get(f"{server.url}/download/{first}") as answer:
        assert answer.status == 200
        assert await answer.read() == b"one"
    # The cookie is for pages: the API itself still wants a bearer header.
    async with cookie_session.get(f"{server.url}/v1/names/web/disk.qcow2") as answer:
        assert answer.status == 401


async def test_pages_say_what_they_load_and_that_they_run_no_script(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{module_http_server.url}/") as answer:
        policy = answer.headers["Content-Security-Policy"]
        html = await answer.text()
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "<script" not in html


async def test_bad_input_to_pages_is_a_clear_page_not_a_server_error(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    cases = {
        "/?prefix=a%20b": 400,
        "/?prefix=web/&after=%00": 400,
        "/names/a%0Ab": 400,
        "/names/never/existed": 404,
        "/names/web/disk.qcow2?before=0": 400,
        "/names/web/disk.qcow2?before=x": 400,
        "/blobs/blake3:nothex": 400,
        f"/blobs/blake3:{'0' * 64}": 404,
    }
    for path, status in cases.items():
        async with http.get(f"{module_http_server.url}{path}") as answer:
            assert answer.status == status, path
            assert "text/html" in answer.headers["Content-Type"]
            assert f"<h1>{status} " in await answer.text()


async def test_a_read_scoped_token_sees_only_its_names(
    http_server_factory: HttpServerFactory,
    http: aiohttp.ClientSession,
    cookie_session: aiohttp.ClientSession,
) -> None:
    server = http_server_factory("--private")
    token = server.admin_token
    shared = await upload(http, server, token, b"shared")
    for name in ["team-a/disk.qcow2", "team-b/disk.qcow2"]:
        await put_name(http, server, token, name, {"digest": shared}, create_only())
    secret_b = await upload(http, server, token, b"team b only")
    await put_name(http, server, token, "team-b/other", {"digest": secret_b}, create_only())
    created = server.run_cli("token", "create", "--read", "team-a")
    assert created.returncode == 0, created.stderr
    form = {"token": created.stdout.strip(), "next": "/"}
    async with cookie_session.post(f"{server.url}/login", data=form) as answer:
        assert answer.status == 200
        front = await answer.text()
    assert "team-a/" in front and "team-b" not in front

    async with cookie_session.get(f"{server.url}/?prefix=team") as answer:
        found = await answer.text()
    assert "team-a/disk.qcow2" in found and "team-b" not in found
    async with cookie_session.get(f"{server.url}/blobs/{shared}") as answer:
        assert answer.status == 200
        page = await answer.text()
    assert "team-a/disk.qcow2" in page and "team-b" not in page
    for path in ["/names/team-b/disk.qcow2", f"/blobs/{secret_b}", "/ops"]:
        async with cookie_session.get(f"{server.url}{path}") as answer:
            assert answer.status == 403, path
