"""The page of `facerec serve` in a real headless Chromium (Debian's `chromium`, driven by Playwright):
start from an empty gallery, enroll a face under a name, identify photos and see them drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import SHARED
from support.browser import chromium
from support.gallery import shrink, weights_cache
from support.serve import Server

KNOWN = (46, 204, 64)  # the page's colours for a named face and an unknown one (style.css, app.js)
UNKNOWN = (255, 65, 54)


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright; missing, it fails the test with what to install (never a skip)."""
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server(tmp_path_factory, seeded_weights):
    """A server on a gallery not written yet: its first enrollment creates it with these models."""
    root = tmp_path_factory.mktemp("page")
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    running = Server("--gallery", root / "gallery", "--weights", seeded_weights, env=env)
    yield running
    running.stop()


def colour_pixels(picture: Path, colour: tuple[int, int, int]) -> int:
    """How many pixels of the screenshot have `colour` (within a little, for the browser's smoothing)."""
    pixels = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.asarray(colour)).max(axis=2) <= 8).sum())


def test_the_page_enrolls_a_face_and_draws_who_is_in_a_photo(server, browser, tmp_path):
    photo = shrink(SHARED / "faces" / "knn" / "test" / "obama_and_biden.jpg", tmp_path / "pair.jpg")
    page = browser.new_page(viewport={"width": 1000, "height": 1400})
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(server.url)
    page.get_by_text("gallery empty").wait_for()
    page.set_input_files("#photo", str(photo))
    page.fill("#name", "Zoë")
    page.click("#enroll")  # the largest face of the photo
    page.get_by_text("enrolled face").wait_for()
    page.locator("#identities li", has_text="Zoë (1)").wait_for()

    page.fill("#threshold", "0.01")  # seeded weights put every face near every other: only Zoë's own passes
    page.click("#identify")
    page.locator("#status", has_text="known").wait_for()
    rows = page.locator("#faces tbody tr")
    named = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())]
    assert named[0] == "Zoë" and set(named[1:]) == {"unknown"} and len(named) > 1
    assert rows.nth(0).locator("td").nth(2).inner_text() == "0.000"
    assert page.locator("#status").inner_text() == f"{len(named)} faces, 1 known"
    assert page.locator("#gallery").inner_text().endswith(": 1 face of 1 identity")

    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert colour_pixels(screenshot, KNOWN) > 200 and colour_pixels(screenshot, UNKNOWN) > 200
    assert all(url.startswith(server.url) for url in requested), requested  # nothing from elsewhere
    assert problems == []

    page.click("text=API documentation")  # the OpenAPI docs, from the package's own files too
    page.get_by_text("/v1/identities/{identity}/faces").first.wait_for()
    assert all(url.startswith(server.url) for url in requested), requested
    page.close()
