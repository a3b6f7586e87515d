"""Debian's Chromium for the browser tests (Playwright drives it): where it is and how it is started."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "open_page"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: no sandbox (the tests may run as root), no GPU, and no network of its own
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def open_page(viewport: dict[str, int] | None = None) -> Iterator[tuple[Any, list[str]]]:
    """A page of a fresh headless Chromium (``viewport`` in pixels, Chromium's default when None) and the list
    that collects its console errors and uncaught exceptions; the browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make system-deps installs it")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page, errors
        finally:
            browser.close()
