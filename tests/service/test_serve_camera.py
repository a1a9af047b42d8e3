"""The page's camera in a real headless Chromium (Debian's `chromium`, driven by Playwright): its fake
camera plays two seconds of the Hamilton clip, the page streams snapshots to a real `facerec serve`
over /v1/stream (its API key sent as the stream's first message) and shows who it names."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from support.browser import chromium
from support.serve import Server

CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
CAMERA_FRAMES, CAMERA_SIZE = 60, (640, 360)  # the fake camera loops the file: a short, small one will do
WAIT_MS = 90_000


def camera_file(hamilton, target: Path) -> Path:
    """Frames of the Hamilton clip with Lin-Manuel Miranda, as the YUV4MPEG2 file Chromium's fake
    camera plays."""
    width, height = CAMERA_SIZE
    with av.open(str(hamilton.source)) as source, av.open(str(target), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for number, frame in enumerate(source.decode(video=0)):
            if number >= hamilton.lin_from + CAMERA_FRAMES:
                break
            if number >= hamilton.lin_from:
                picture = frame.reformat(width, height, "yuv420p")
                picture.pts = number - hamilton.lin_from
                out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return target


@pytest.fixture(scope="module")
def browser(hamilton, tmp_path_factory):
    """Chromium through Playwright with the clip as its camera; missing, it fails the test with what to
    install (never a skip)."""
    camera = camera_file(hamilton, tmp_path_factory.mktemp("camera") / "camera.y4m")
    with chromium([*CAMERA_ARGS, f"--use-file-for-fake-video-capture={camera}"]) as launched:
        yield launched


@pytest.fixture(scope="module")
def server(hamilton):
    running = Server("--gallery", hamilton.gallery, "--api-keys", hamilton.keys, env=hamilton.env)
    yield running
    assert running.stop() == 130
    assert hamilton.read_key not in running.output and "Traceback" not in running.output


def test_the_camera_is_streamed_and_the_faces_named_over_it(hamilton, server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 1100})
    requested: list[str] = []
    sockets: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(server.url)
    page.locator("#gallery", has_text="401").wait_for(timeout=WAIT_MS)  # the page asks for the key
    keyless = len(problems)  # the browser logs the refused load of the identities
    page.fill("#key", hamilton.read_key)
    page.click("#save-key")
    page.locator("#identities li", has_text="lin_manuel_miranda (1)").wait_for(timeout=WAIT_MS)
    page.click("#camera")
    page.locator("#seen li", has_text="lin_manuel_miranda").wait_for(timeout=WAIT_MS)
    page.locator("#camera-status", has_text="frames named").wait_for(timeout=WAIT_MS)
    assert page.locator("#camera").inner_text() == "Stop camera"
    named = page.locator("#seen li").all_inner_texts()
    assert any(text.startswith("lin_manuel_miranda 0.") for text in named), named
    assert (
        page.evaluate("document.querySelector('#overlay').width") == CAMERA_SIZE[0]
    )  # boxes in frame pixels

    screenshot = tmp_path / "camera.png"
    page.screenshot(path=str(screenshot), full_page=True)
    page.click("#camera")  # stop: the server answers the open tracks, then closes the stream
    page.locator("#camera-status", has_text="camera off").wait_for(timeout=WAIT_MS)
    status = page.locator("#camera-status").inner_text()
    assert status.startswith("camera off: ") and status.endswith(" dropped"), status
    assert page.locator("#camera").inner_text() == "Start camera"
    assert sockets == [server.url.replace("http://", "ws://") + "v1/stream"]
    assert all(url.startswith(server.url) for url in requested), requested  # nothing from elsewhere
    assert problems[keyless:] == []
    page.close()
