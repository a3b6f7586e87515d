"""Debian's Chromium for the browser tests (Playwright drives it): where it is and how it is started."""

import shutil

__all__ = ["CHROMIUM", "CHROMIUM_ARGS"]

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
