"""Debian's chromium driven by Playwright (Playwright's own browser download is not used): the page's
tests run in a real headless browser, and a missing one fails the test with what to install."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextmanager
def chromium(extra: Sequence[str] = ()) -> Iterator[Any]:
    """A launched Chromium (Playwright's Browser) with `extra` command-line arguments."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra])
        try:
            yield launched
        finally:
            launched.close()
