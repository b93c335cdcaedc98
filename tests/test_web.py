"""The pages as a person sees them, in a real browser (headless chromium) against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser import cell_texts, launch, screenshot
from tests.conftest import AnyServer, HttpServerFactory
from tests.helpers import blob_path
from tests.inprocess import InProcessServer
from tests.integrity_helpers import flip_byte, run_json
from tests.name_helpers import bearer, create_only, if_match, put_name, upload

# A real browser (chromium, as a person would use it) against an in-process server.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async for launched in launch():
        yield launched


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    yield page
    await context.close()


async def flipped_name(
    http: aiohttp.ClientSession, server: AnyServer, name: str
) -> tuple[str, str]:
    """``name`` created at one blob with build 1, then flipped to another with build 2."""
    token = server.admin_token
    first = await upload(http, server, token, f"{name} first".encode())
    second = await upload(http, server, token, f"{name} second, longer".encode())
    body = {"digest": first, "metadata": {"build": "1"}}
    assert (await put_name(http, server, token, name, body, create_only()))[0] == 201
    body = {"digest": second, "metadata": {"build": "2", "branch": "main"}}
    assert (await put_name(http, server, token, name, body, if_match(1)))[0] == 200
    return first, second


async def test_a_names_history_two_clicks_from_the_front_page(
    http_server: InProcessServer, http: aiohttp.ClientSession, page: Page
) -> None:
    first, second = await flipped_name(http, http_server, "prod/disk.qcow2")
    await flipped_name(http, http_server, "prod/images/kernel")
    await upload(http, http_server, http_server.admin_token, b"readme")

    await page.goto(http_server.url + "/")
    await expect(page.locator("table.names")).to_contain_text("prod/")
    await screenshot(page, "browse")
    await page.get_by_role("link", name="prod/", exact=True).first.click()
    await expect(page.locator("table.names")).to_contain_text("images/")
    await page.get_by_role("link", name="disk.qcow2").click()

    await expect(page.locator("h1")).to_have_text("prod/disk.qcow2")
    await expect(page.locator("dl.record")).to_contain_text(second)
    await expect(page.locator("dl.record")).to_contain_text("healthy")
    history = await cell_texts(page, "table.history")
    short = {digest: digest.removeprefix("blake3:")[:12] for digest in (first, second)}
    assert history[0][:3] == ["2", "update", f"{short[first]} → {short[second]}"]
    assert history[0][3] == '+ branch: "main" ~ build: "1" → "2"'
    assert history[1][:3] == ["1", "create", short[first]]
    assert history[1][3] == '+ build: "1"'
    await expect(page.locator("pre").filter(has_text="/v1/blobs/")).to_contain_text(
        f"curl -fo disk.qcow2 {http_server.url}/v1/blobs/{second}"
    )
    await expect(page.locator("pre").filter(has_text="/content")).to_contain_text(
        f"curl -fo disk.qcow2 {http_server.url}/v1/names/prod/disk.qcow2/content"
    )
    await expect(page.locator("pre").filter(has_text="casd get")).to_contain_text(
        "casd get prod/disk.qcow2 -o disk.qcow2"
    )
    await screenshot(page, "name")

    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="disk.qcow2", exact=True).click()
    download = await download_info.value
    assert download.suggested_filename == "disk.qcow2"
    assert (
        await asyncio.to_thread(_read, await download.path())
    ) == b"prod/disk.qcow2 second, longer"


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def test_a_quarantined_blob_is_shown_unhealthy(
    http_server: InProcessServer, http: aiohttp.ClientSession, page: Page
) -> None:
    _, second = await flipped_name(http, http_server, "rot/disk.qcow2")
    flip_byte(blob_path(http_server.data_dir, second), 3)
    report = await asyncio.to_thread(run_json, http_server, "scrub")
    assert report["corrupt"] == 1

    await page.goto(f"{http_server.url}/names/rot/disk.qcow2")
    await expect(page.locator("dl.record .badge")).to_have_text("unhealthy")
    await page.locator("dl.record a.mono").click()

    await expect(page.locator("h1")).to_have_text(second)
    await expect(page.locator("dl.record")).to_contain_text("quarantined")
    await expect(page.locator("dl.record")).to_contain_text("found corrupt")
    names = await cell_texts(page, "table", 0)
    assert names[0][:2] == ["rot/disk.qcow2", "2"]
    entries = await cell_texts(page, "table", 1)
    assert entries[0][:3] == ["rot/disk.qcow2", "2", "update"]
    await screenshot(page, "blob-quarantined")

    await page.goto(f"{http_server.url}/?prefix=rot/")
    row = page.locator("table.names tbody tr").filter(has_text="disk.qcow2")
    await expect(row.locator(".badge")).to_have_text("unhealthy")


async def test_operations_show_the_store_uploads_and_the_last_scrub(
    http_server: InProcessServer, http: aiohttp.ClientSession, page: Page
) -> None:
    _, second = await flipped_name(http, http_server, "ops/disk.qcow2")
    flip_byte(blob_path(http_server.data_dir, second), 0)
    await asyncio.to_thread(run_json, http_server, "scrub")
    headers = {**bearer(http_server.admin_token), "Upload-Length": "1000"}
    async with http.post(
        f"{http_server.url}/v1/uploads", data=b"x" * 250, headers=headers
    ) as answer:
        assert answer.status == 201

    await page.goto(f"{http_server.url}/ops")
    cards = page.locator(".card")
    await expect(cards.filter(has_text="quarantined")).to_contain_text("1")
    await expect(cards.filter(has_text="stored blobs")).to_contain_text("1")
    await expect(cards.filter(has_text="uploads in flight")).to_contain_text("1")
    await expect(page.locator("svg.chart path")).to_have_count(2)
    uploads = await cell_texts(page, "table", 0)
    assert "25%" in uploads[0][2] and uploads[0][5] == "paused"
    runs = await cell_texts(page, "table", 1)
    assert runs[0][0] == "scrub" and "corrupt: 1" in runs[0][2]
    assert runs[1] == ["gc", "never", "—"]
    await screenshot(page, "ops")


async def test_folders_are_paginated_and_searchable(
    http_server: InProcessServer, http: aiohttp.ClientSession, page: Page
) -> None:
    token = http_server.admin_token
    digest = await upload(http, http_server, token, b"shared bytes")
    body = {"digest": digest}
    names = [f"many/n-{index:03d}" for index in range(125)] + ["many/sub/a", "many/sub/b"]
    await asyncio.gather(
        *(put_name(http, http_server, token, name, body, create_only()) for name in names)
    )

    await page.goto(f"{http_server.url}/?prefix=many/")
    first_page = await cell_texts(page, "table.names")
    assert len(first_page) == 100
    assert first_page[0][0] == "n-000" and first_page[-1][0] == "n-099"
    await screenshot(page, "browse-page-1")
    await page.get_by_role("link", name="next page »").click()
    second_page = await cell_texts(page, "table.names")
    assert [row[0] for row in second_page] == [f"n-{i:03d}" for i in range(100, 125)] + ["sub/"]
    await expect(page.get_by_role("link", name="next page »")).to_have_count(0)
    await page.get_by_role("link", name="« first page").click()
    assert len(await cell_texts(page, "table.names")) == 100

    await page.get_by_label("name prefix").fill("many/n-12")
    await page.get_by_role("button", name="Search").click()
    found = await cell_texts(page, "table.names")
    assert [row[0] for row in found] == [f"many/n-{i}" for i in range(120, 125)]


async def test_a_private_server_asks_for_a_token_kept_in_a_cookie(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession, browser: Browser
) -> None:
    server = http_server_factory("--private")
    await flipped_name(http, server, "secret/disk.qcow2")
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{server.url}/names/secret/disk.qcow2")
        await expect(page.locator("h1")).to_have_text("Sign in")
        await expect(page.locator("main")).to_contain_text("This server is private")
        assert "disk.qcow2" not in await page.locator("main").inner_text()
        await screenshot(page, "login")

        await page.get_by_label("Token").fill("casd_not-a-token")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator(".notice.bad")).to_contain_text("unknown or revoked")

        await page.get_by_label("Token").fill(server.admin_token)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("h1")).to_have_text("secret/disk.qcow2")
        assert page.url == f"{server.url}/names/secret/disk.qcow2"
        await expect(page.locator("header")).to_contain_text("signed in as token:1 (admin)")
        await _check_cookie(context, server)

        await page.get_by_role("button", name="Sign out").click()
        await page.goto(f"{server.url}/")
        await expect(page.locator("h1")).to_have_text("Sign in")
    finally:
        await context.close()


async def _check_cookie(context: BrowserContext, server: AnyServer) -> None:
    cookies = await context.cookies(server.url)
    assert [cookie["name"] for cookie in cookies] == ["casd_token"]
    cookie = cookies[0]
    assert cookie["value"] == server.admin_token
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP on loopback; Secure over TLS


async def test_rolling_back_from_the_page_is_a_compare_and_swap(
    http_server: InProcessServer, http: aiohttp.ClientSession, browser: Browser
) -> None:
    first, second = await flipped_name(http, http_server, "roll/disk.qcow2")
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{http_server.url}/names/roll/disk.qcow2")
        await expect(page.get_by_role("button", name="Restore v1")).to_have_count(0)
        await page.get_by_role("link", name="sign in to restore").click()
        await page.get_by_label("Token").fill(http_server.admin_token)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("h1")).to_have_text("roll/disk.qcow2")

        stale = await context.new_page()
        await stale.goto(f"{http_server.url}/names/roll/disk.qcow2")
        await page.get_by_role("button", name="Restore v1").click()
        await expect(page.locator(".notice.good")).to_contain_text("Rolled back")
        history = await cell_texts(page, "table.history")
        short = {digest: digest.removeprefix("blake3:")[:12] for digest in (first, second)}
        assert history[0][:3] == ["3", "update", f"{short[second]} → {short[first]}"]
        assert history[0][3] == '- branch: "main" ~ build: "2" → "1"'
        assert history[0][4] == "token:1 (admin)"
        async with http.get(f"{http_server.url}/v1/names/roll/disk.qcow2") as answer:
            record = await answer.json()
        assert (record["version"], record["digest"], record["metadata"]) == (
            3,
            first,
            {"build": "1"},
        )
        await screenshot(page, "name-rolled-back")

        # The other tab still shows version 2: its restore must not overwrite version 3.
        await stale.get_by_role("button", name="Restore v1").click()
        await expect(stale.locator("h1")).to_have_text("412 Precondition failed")
        await expect(stale.locator(".notice.bad")).to_contain_text("at version 3")
        async with http.get(f"{http_server.url}/v1/names/roll/disk.qcow2") as answer:
            assert (await answer.json())["version"] == 3
    finally:
        await context.close()


async def test_the_api_reference_is_rendered_from_the_description(
    module_http_server: InProcessServer, page: Page
) -> None:
    await page.goto(f"{module_http_server.url}/")
    await page.get_by_role("link", name="API", exact=True).click()
    await expect(page.locator("h1")).to_have_text("casd API v1")
    put_name_section = page.locator("section#putName")
    await expect(put_name_section.locator("h3")).to_have_text("PUT /v1/names/{name}")
    await expect(put_name_section).to_contain_text("precondition-failed")
    await expect(put_name_section).to_contain_text("If-Match")
    await expect(page.locator("#problems + p")).to_contain_text("mismatching-upload-offset")
    await screenshot(page, "api")
