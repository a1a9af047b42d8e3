"""`facerec serve` with videos: a real server process over a dlib-resnet gallery of the Hamilton clip's
people, clips uploaded to POST /v1/videos by a real HTTP client, frames pushed over the /v1/stream
WebSocket by a real WebSocket client (websockets), and the answers compared with what `facerec
identify` prints for the same clip.

The server has short bounds, set on its command line: `--max-upload 1MB`, `--max-queue 2`,
`--read-timeout 3` and `--max-pixels-in-flight 10000000` (39 frames of 640x360, what a clip followed at
the default stride keeps decoded at once, fit; 69, at stride 30, do not).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import av
import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from support import PHOTOS
from support.cli import run_cli
from support.serve import Server, assert_same_json, post_image

IDLE_S = 3
MAX_PIXELS = 10_000_000
WAIT_S = 60  # the longest wait for one message from the server

# a clip's JSON prints its floats to 4 decimals: the last moves by one where a batch's make-up, or the
# threads torch runs on, move a float's last bits across a rounding boundary
PRINTED = 1e-4


@pytest.fixture(scope="module")
def server(hamilton):
    running = Server(
        "--gallery", hamilton.gallery, "--api-keys", hamilton.keys, "--max-upload", "1MB",
        "--max-queue", 2, "--read-timeout", IDLE_S, "--max-pixels-in-flight", MAX_PIXELS,
        env=hamilton.env,
    )  # fmt: skip
    yield running
    assert running.stop() == 130
    assert hamilton.read_key not in running.output and "Traceback" not in running.output
    assert '"WebSocket /v1/stream" [accepted]' in running.output and "stride=" not in running.output


def read(hamilton) -> dict[str, str]:
    return {"Authorization": f"Bearer {hamilton.read_key}"}


def post_video(server: Server, path: Path, headers: dict[str, str], **params) -> requests.Response:
    return post_image(server.url + "v1/videos", path, field="video", headers=headers, params=params)


def cli_json(hamilton, *args: object) -> list[dict]:
    printed = run_cli(*args, "--gallery", hamilton.gallery, "--json", cwd=hamilton.root, env=hamilton.env)
    assert printed.returncode == 0, printed.stderr
    return [json.loads(line) for line in printed.stdout.splitlines()]


def one_line_error(response: requests.Response, status: int, says: str) -> None:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body = response.json()
    assert list(body) == ["error"] and says in body["error"] and "\n" not in body["error"], body


# Uploaded clips


def test_a_clip_is_answered_with_the_tracks_identify_prints(hamilton, server):
    expected = cli_json(hamilton, "identify", hamilton.clip.name, "--stride", 4)
    assert "lin_manuel_miranda" in {track["identity"] for track in expected}
    answer = post_video(server, hamilton.clip, read(hamilton), stride=4)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body) == ["video", "tracks"] and body["video"] == "clip.mp4"
    assert_same_json(body["tracks"], expected, tolerance=PRINTED)

    strict = post_video(server, hamilton.clip, read(hamilton), stride=4, top_k=1, threshold=0).json()
    assert [track["frames"] for track in strict["tracks"]] == [track["frames"] for track in expected]
    for track in strict["tracks"]:
        assert track["identity"] is None and len(track["candidates"]) == 1


def test_a_damaged_clip_is_answered_with_what_could_be_read_and_a_warning(hamilton, server, tmp_path):
    whole = hamilton.cut(
        tmp_path / "whole.mp4", hamilton.lin_from, 40, {"movflags": "faststart"}
    )  # its index first
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    answer = post_video(server, truncated, read(hamilton), stride=4)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body) == ["video", "tracks", "warning"]
    assert body["warning"].startswith("truncated.mp4: the file ends after frame ")
    assert body["warning"].endswith(" of 40 (truncated?)")
    (track,) = body["tracks"]
    assert track["identity"] == "lin_manuel_miranda" and 4 < len(track["frames"]) < 40

    stub = tmp_path / "stub.mp4"
    stub.write_bytes(data[: len(data) // 20])
    one_line_error(post_video(server, stub, read(hamilton)), 400, "stub.mp4: no frame could be decoded: ")


def test_what_is_no_video_or_not_allowed_is_refused_in_one_line(hamilton, server, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    photo = PHOTOS / "lin-manuel-miranda.png"
    big = tmp_path / "big.mp4"
    big.write_bytes(hamilton.clip.read_bytes() * 7)
    cases = [
        (post_video(server, hamilton.clip, {}), 401, "an API key is needed"),
        (post_video(server, hamilton.clip, {"Authorization": "Bearer not-a-key-0123456789"}), 401, "unknown API key"),
        (post_video(server, photo, read(hamilton)), 415, "lin-manuel-miranda.png: not a video (send an MP4"),
        (post_video(server, empty, read(hamilton)), 400, "empty.mp4: the upload is empty"),
        (post_video(server, hamilton.clip, read(hamilton), stride=0), 400, "stride:"),
        (post_video(server, hamilton.clip, read(hamilton), threshold=-1), 400, "threshold:"),
        (post_video(server, hamilton.clip, read(hamilton), stride=30), 413, "clip.mp4: 69 frames of 640x360 pixels is more than"),
        (post_video(server, big, read(hamilton)), 413, "larger than --max-upload"),
    ]  # fmt: skip
    for response, status, says in cases:
        one_line_error(response, status, says)


def test_a_gallery_with_nobody_in_it_leaves_every_track_unknown(hamilton, tmp_path):
    empty = Server("--gallery", tmp_path / "gallery", "--backbone", "dlib-resnet", env=hamilton.env)
    try:
        answer = post_video(empty, hamilton.clip, {}, stride=8)
    finally:
        empty.stop()
    assert answer.status_code == 200, answer.text
    tracks = answer.json()["tracks"]
    assert tracks and all(track["identity"] is None and track["candidates"] == [] for track in tracks)


def cpu_seconds(pid: int) -> float:
    """User and system time of process `pid` so far (Linux's /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_clip_whose_client_left_is_not_followed_to_its_end(hamilton, server):
    """The whole clip at stride 1 takes the server many seconds; the client hangs up after one."""
    prepared = requests.Request(
        "POST",
        server.url + "v1/videos?stride=1",
        files={"video": (hamilton.source.name, hamilton.source.read_bytes())},
        headers=read(hamilton),
    ).prepare()
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    head = f"POST /v1/videos?stride=1 HTTP/1.1\r\nHost: {host}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in prepared.headers.items()
    )
    with socket.create_connection((host, int(port))) as client:
        client.sendall(head.encode() + b"\r\n" + prepared.body)
        time.sleep(1)
        busy = cpu_seconds(server.process.pid)
        time.sleep(1)
        assert cpu_seconds(server.process.pid) - busy > 0.2  # it was following the clip
    time.sleep(1.5)  # the server notices within half a second, the round under way ends
    idle = cpu_seconds(server.process.pid)
    time.sleep(2)
    assert cpu_seconds(server.process.pid) - idle < 0.3
    assert requests.get(server.url + "health", timeout=30).status_code == 200


# The stream


def stream_address(server: Server, **params) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return server.url.replace("http://", "ws://") + "v1/stream" + query


@contextlib.contextmanager
def opened(
    server: Server, key: str | None, additional_headers: dict | None = None, **params
) -> Iterator[ClientConnection]:
    """A stream that said it is ready, its key sent as the first message (None: none sent)."""
    with connect(
        stream_address(server, **params), proxy=None, additional_headers=additional_headers
    ) as stream:
        if key is not None:
            stream.send(json.dumps({"key": key}))
        assert json.loads(stream.recv(WAIT_S)) == {"ready": True, "video": "camera"}
        yield stream


def messages_until(stream: ClientConnection, last: Callable[[dict], bool]) -> list[dict]:
    """The messages received up to the first that `last` accepts, that one included."""
    found = []
    while not found or not last(found[-1]):
        found.append(json.loads(stream.recv(WAIT_S)))
    return found


def messages_to_the_end(stream: ClientConnection) -> Iterator[dict]:
    try:
        while True:
            yield json.loads(stream.recv(WAIT_S))
    except ConnectionClosed:
        return


def frames_of(clip: Path, kind: str = "PNG") -> list[bytes]:
    """The clip's frames as images of `kind`, decoded as facerec.video.source decodes them."""
    encoded = []
    with av.open(str(clip)) as video:
        for frame in video.decode(video=0):
            out = io.BytesIO()
            frame.to_image().save(out, kind)
            encoded.append(out.getvalue())
    return encoded


def without(record: dict, *keys: str) -> dict:
    return {key: value for key, value in record.items() if key not in keys}


def test_frames_streamed_one_at_a_time_are_named_as_identify_names_the_clip(hamilton, server):
    short = hamilton.cut(hamilton.root / "short.mp4", hamilton.lin_from, 12)
    per_frame = cli_json(hamilton, "identify", short.name, "--stride", 1, "--per-frame")
    tracks = cli_json(hamilton, "identify", short.name, "--stride", 1)
    assert "lin_manuel_miranda" in {track["identity"] for track in tracks}

    said = []
    with opened(server, hamilton.read_key, stride=1) as stream:
        for number, frame in enumerate(frames_of(short)):
            stream.send(frame)
            said += messages_until(stream, lambda message: "done" in message)
            assert said[-1] == {"done": number, "dropped": 0}
        stream.send(json.dumps({"finish": True}))
        said += messages_to_the_end(stream)
        assert stream.close_code == 1000
    frames = [message for message in said if "faces" in message]
    assert [frame["video"] for frame in frames] == ["camera"] * len(per_frame)
    assert [frame["time"] for frame in frames] == sorted(frame["time"] for frame in frames)
    assert_same_json(
        [without(frame, "video", "time") for frame in frames],
        [without(frame, "video", "time") for frame in per_frame],
        tolerance=PRINTED,
    )
    final = {message["track"]: message for message in said if "frames" in message}  # the last word on each
    assert_same_json(
        [without(track, "video", "start", "end") for track in final.values()],
        [without(track, "video", "start", "end") for track in tracks],
        tolerance=PRINTED,
    )


def test_frames_sent_faster_than_they_are_processed_are_dropped_but_the_newest(hamilton, server):
    frames = frames_of(hamilton.clip, "JPEG")[:6]
    with opened(server, hamilton.read_key) as stream:
        for frame in frames:  # all at once: the first is being processed while the others arrive
            stream.send(frame)
        done = [m for m in messages_until(stream, lambda message: message.get("done") == 5) if "done" in m]
    numbers = [message["done"] for message in done]
    assert numbers[0] == 0 and numbers[-1] == 5 and numbers == sorted(numbers)
    assert done[-1]["dropped"] == len(frames) - len(numbers) > 0


def refused(address: str, **options) -> tuple[int, dict]:
    """The HTTP status and JSON body that refused a WebSocket handshake."""
    with pytest.raises(InvalidStatus) as refusal:
        connect(address, proxy=None, open_timeout=WAIT_S, **options)
    response = refusal.value.response
    return response.status_code, json.loads(response.body)


def closed_with(stream: ClientConnection) -> tuple[list[dict], int | None]:
    """What the server said before closing the stream, and the close code."""
    said = list(messages_to_the_end(stream))
    return said, stream.close_code


def test_the_stream_needs_a_key_refuses_what_it_cannot_use_and_closes_idle_streams(hamilton, server):
    frame = frames_of(hamilton.clip, "JPEG")[0]
    header = {"Authorization": f"Bearer {hamilton.read_key}"}

    with connect(stream_address(server), proxy=None) as stream:  # no key message: the frame comes first
        stream.send(frame)
        said, code = closed_with(stream)
    assert code == 4401 and said == [
        {"error": 'an API key is needed: send {"key": KEY} as the first message'}
    ]
    with connect(stream_address(server), proxy=None) as stream:
        stream.send(json.dumps({"key": "not-a-key-0123456789"}))
        assert closed_with(stream) == ([{"error": "unknown API key"}], 4401)
    bad_header = {"Authorization": "Bearer not-a-key-0123456789"}
    assert refused(stream_address(server), additional_headers=bad_header) == (
        401,
        {"error": "unknown API key"},
    )
    status, body = refused(stream_address(server, stride=0), additional_headers=header)
    assert status == 400 and body["error"].startswith("stride: ")

    with opened(server, None, additional_headers=header) as stream:  # a key in the header: no key message
        stream.send(b"not an image")
        assert messages_until(stream, lambda message: "done" in message) == [
            {"error": "frame 0: not an image (send a JPEG, PNG, WebP, GIF, BMP or TIFF file)"},
            {"done": 0, "dropped": 0},
        ]
        stream.send(frame)  # the stream goes on
        assert messages_until(stream, lambda message: "done" in message)[-1] == {"done": 1, "dropped": 0}
        stream.send(json.dumps({"what": "now"}))
        said, code = closed_with(stream)
    assert code == 4400 and said == [
        {"error": 'expected a frame (a binary message), {"finish": true} or {"key": KEY}'}
    ]

    with opened(server, hamilton.read_key) as stream:
        stream.send(b"\xff" * 1_100_000)  # over --max-upload
        assert closed_with(stream) == ([], 1009)
    started = time.monotonic()  # before the connection: the server's idle clock starts after it
    with opened(server, hamilton.read_key) as stream:
        said, code = closed_with(stream)
    assert code == 4408 and said == [{"error": f"no frame for {IDLE_S} s: closing the stream"}]
    assert IDLE_S <= time.monotonic() - started < IDLE_S + 5


def test_each_stream_holds_a_place_in_the_queue(hamilton, server):
    with opened(server, hamilton.read_key), opened(server, hamilton.read_key):  # --max-queue 2
        status, body = refused(stream_address(server))
    assert status == 503 and body["error"].startswith("server busy: 2 image requests")
    time.sleep(0.5)  # the server sees them closed
    with opened(server, hamilton.read_key):
        pass
