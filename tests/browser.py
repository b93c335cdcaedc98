"""A real browser for the page tests: Debian's chromium driven by Playwright (never a browser
Playwright downloads). ``make test`` installs chromium when it is missing. Screenshots go to
``test-artifacts/screenshots/`` (kept by the test run, ignored by git)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")


async def launch() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Keep what the page looks like now under test-artifacts/screenshots/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def cell_texts(page: Page, table: str, index: int = 0) -> list[list[str]]:
    """The visible text of each row's cells of the body of the ``index``-th ``table``."""
    rows = page.locator(table).nth(index).locator("tbody tr")
    texts: list[list[str]] = await rows.evaluate_all(
        "rows => rows.map(row => [...row.cells].map(cell => cell.innerText))"
    )
    return [[" ".join(text.split()) for text in row] for row in texts]
