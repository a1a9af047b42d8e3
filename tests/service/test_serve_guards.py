"""`facerec serve` against hostile clients: a real server process on 127.0.0.1, raw sockets and a real
HTTP client. Names in paths follow `facerec index`'s rule (NFC, refusals); a body that stops coming is
answered 408 and its connection closed; a refused body still being sent gets its answer, not a reset;
uploads being received at once are bounded (503); the access log never shows a query string; decoded
pixels in flight are bounded (413, 503).

The server has short bounds, set on its command line, so that each test takes seconds: `--read-timeout
2`, `--max-uploads 2`, `--max-pixels-in-flight 70000000` and `--pixel-wait 0`, with `--detector none`
(a picture is one face) and seeded weights on a gallery not written yet.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from support.serve import Server, post_image

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
READ = {"Authorization": f"Bearer {READ_KEY}"}
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
READ_TIMEOUT = 2.0
MAX_PIXELS = 70_000_000
NFC = "Ren\u00e9"
NFD = "Rene\u0301"


@pytest.fixture(scope="module")
def made(tmp_path_factory, seeded_weights):
    """Keys, photos (small ones of their own bytes, and huge grayscale PNGs of a few dozen kB)."""
    root = tmp_path_factory.mktemp("guards")
    keys = root / "keys"
    keys.write_text(f"{READ_KEY} read\n{WRITE_KEY} write\n")
    photos = root / "photos"
    photos.mkdir()
    for shade in range(3):
        Image.new("RGB", (64, 64), (shade, 90, 200)).save(photos / f"small{shade}.png")
    Image.new("L", (10000, 6000)).save(photos / "huge.png")  # 60 million pixels: fits the budget alone
    Image.new("L", (8000, 9000)).save(photos / "over.png")  # 72 million: more than the whole budget
    env = {"TORCH_HOME": str(root / "torch-home"), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    return SimpleNamespace(root=root, keys=keys, photos=photos, env=env, weights=seeded_weights)


@pytest.fixture(scope="module")
def server(made):
    running = Server(
        "--gallery", made.root / "gallery", "--api-keys", made.keys, "--weights", made.weights,
        "--detector", "none", "--read-timeout", READ_TIMEOUT, "--max-uploads", 2,
        "--max-pixels-in-flight", MAX_PIXELS, "--pixel-wait", 0, "--workers", 2,
        env=made.env,
    )  # fmt: skip
    yield running
    assert running.stop() == 130
    assert "SECRET123" not in running.output
    assert READ_KEY not in running.output and WRITE_KEY not in running.output
    assert "Traceback" not in running.output


def api(server: Server, path: str) -> str:
    return server.url + path.lstrip("/")


def one_line_error(response: requests.Response, status: int, says: str) -> dict:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and says in body["error"] and "\n" not in body["error"], body
    return body


# Names


def enroll(server: Server, name: str, photo: Path) -> requests.Response:
    return post_image(api(server, f"/v1/identities/{quote(name)}/faces"), photo, headers=WRITE)


def test_both_spellings_of_a_name_are_one_identity(made, server):
    first = enroll(server, NFC, made.photos / "small0.png")
    second = enroll(server, NFD, made.photos / "small1.png")
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert first.json()["identity"] == second.json()["identity"] == NFC
    listed = requests.get(api(server, "/v1/identities"), headers=READ, timeout=30).json()
    assert listed == [{"identity": NFC, "faces": 2}]
    for spelling in (NFC, NFD):
        faces = requests.get(api(server, f"/v1/identities/{quote(spelling)}"), headers=READ, timeout=30)
        assert faces.status_code == 200 and faces.json()["identity"] == NFC
        assert len(faces.json()["faces"]) == 2
    face = first.json()["face_id"]
    gone = requests.delete(
        api(server, f"/v1/identities/{quote(NFD)}/faces/{face}"), headers=WRITE, timeout=30
    )
    assert gone.status_code == 204
    gone = requests.delete(api(server, f"/v1/identities/{quote(NFD)}"), headers=WRITE, timeout=30)
    assert gone.status_code == 204
    assert requests.get(api(server, "/v1/identities"), headers=READ, timeout=30).json() == []


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (".hidden", "must not start with '.'"),
        ("\u202egpj.exe", "must not contain bidirectional control characters"),
        ("a\u2066b", "must not contain bidirectional control characters"),
        ("a\u200fb", "must not contain bidirectional control characters"),
        ("a\x00b", "must not contain control characters"),
        ("a\x1bb", "must not contain control characters"),
    ],
)
def test_refused_names_are_400_wherever_they_enter(made, server, name, says):
    path = f"/v1/identities/{quote(name)}"
    photo = made.photos / "small2.png"
    answers = [
        post_image(api(server, f"{path}/faces"), photo, headers=WRITE),
        requests.get(api(server, path), headers=READ, timeout=30),
        requests.delete(api(server, path), headers=WRITE, timeout=30),
        requests.delete(api(server, f"{path}/faces/0123456789abcdef"), headers=WRITE, timeout=30),
    ]
    for answer in answers:
        one_line_error(answer, 400, says)
        assert "\u202e" not in answer.text and "\x1b" not in answer.text
    assert requests.get(api(server, "/v1/identities"), headers=READ, timeout=30).json() == []


# Slow clients

HEAD = (
    "POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n"
)
PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="slow.png"\r\n\r\n'


def started(server: Server, length: int, first: bytes) -> socket.socket:
    """A connection that sent a detect request's headers declaring `length` bytes, then `first`."""
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(HEAD.format(key=READ_KEY, length=length).encode() + first)
    return client


def answer_then_close(client: socket.socket) -> tuple[int, dict[str, str], str]:
    """The status, headers and body of the answer, read until the server closes the connection (a
    socket timeout fails the test: the server kept it open)."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def test_a_body_that_stops_coming_is_answered_408_and_closed(server):
    client = started(server, 10_000_000, PART + b"\x89PNG")  # the probe: 10 MB declared, a few bytes sent
    sent = time.monotonic()
    status, headers, body = answer_then_close(client)
    waited = time.monotonic() - sent
    assert status == 408 and headers["connection"] == "close", body
    assert body.startswith('{"error":"the request body stopped coming: ') and "\n" not in body
    assert READ_TIMEOUT - 0.2 < waited < READ_TIMEOUT + 8


def test_a_body_that_trickles_in_is_answered_408_though_it_never_pauses(server):
    client = started(server, 10_000_000, PART)
    client.setblocking(False)
    start = time.monotonic()
    while not select.select([client], [], [], 0.2)[0]:  # a byte every 0.2 s: never --read-timeout apart
        assert time.monotonic() - start < READ_TIMEOUT + 8, "the server is still reading the trickle"
        client.send(b"x")
    client.setblocking(True)
    status, headers, body = answer_then_close(client)
    assert status == 408 and headers["connection"] == "close", body
    assert time.monotonic() - start < READ_TIMEOUT + 8


def test_uploads_being_received_are_bounded(made, server):
    clients = [started(server, 1000, b"--b") for _ in range(3)]  # --max-uploads 2
    start = time.monotonic()
    answers: dict[int, tuple] = {}

    def read(number: int) -> None:
        answers[number] = (*answer_then_close(clients[number]), time.monotonic() - start)

    readers = [threading.Thread(target=read, args=(number,)) for number in range(3)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=60)
    statuses = sorted(status for status, *_ in answers.values())
    assert statuses == [408, 408, 503], answers
    (busy,) = [(headers, body, took) for status, headers, body, took in answers.values() if status == 503]
    headers, body, took = busy
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert "2 uploads are already being received" in body and took < READ_TIMEOUT  # at once
    # once they are gone, an upload is received again
    assert post_image(api(server, "/v1/detect"), made.photos / "small0.png", headers=READ).status_code == 200


# Logs


def test_the_access_log_shows_paths_without_their_query(server):
    refused = requests.get(api(server, "/v1/identities?api_key=SECRET123&x=1"), timeout=30)
    assert refused.status_code == 401
    health = requests.get(api(server, "/health?token=SECRET123"), timeout=30)
    assert health.status_code == 200
    deadline = time.monotonic() + 10
    while '"GET /health HTTP/1.1" 200' not in server.output:  # the log line comes after the answer
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    assert '"GET /v1/identities HTTP/1.1" 401' in server.output
    assert "SECRET123" not in server.output and "api_key" not in server.output


# Pixels in flight


def test_decoded_pixels_in_flight_are_bounded(made, server):
    one_line_error(
        post_image(api(server, "/v1/detect"), made.photos / "over.png", headers=READ),
        413,
        "over.png: 8000x9000 pixels is more than this server decodes at once (--max-pixels-in-flight "
        "70000000)",
    )
    alone = post_image(api(server, "/v1/detect"), made.photos / "huge.png", headers=READ)
    assert alone.status_code == 200 and alone.json()["faces"][0]["box"] == [0.0, 0.0, 10000.0, 6000.0]

    # verify decodes its two images at once: the second does not fit beside the first, and with
    # --pixel-wait 0 it does not wait for room
    with open(made.photos / "huge.png", "rb") as first, open(made.photos / "huge.png", "rb") as second:
        both = requests.post(
            api(server, "/v1/verify"),
            files={"image1": ("huge.png", first), "image2": ("huge.png", second)},
            headers=READ,
            timeout=120,
        )
    body = one_line_error(both, 503, "server busy: 60000000 pixels of other images are being decoded")
    assert both.headers["Retry-After"] == "1", body

    # the room is given back: the same image is decoded again once the first is done
    deadline = time.monotonic() + 60
    while post_image(api(server, "/v1/detect"), made.photos / "huge.png", headers=READ).status_code != 200:
        assert time.monotonic() < deadline, "the pixels of the answered request were never given back"
        time.sleep(0.2)


def test_an_image_waits_for_room_up_to_the_bound():
    from facerec.service.errors import ServiceError
    from facerec.service.limits import PixelBudget

    budget = PixelBudget(100, wait=5.0)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with budget.reserve("first", (10, 6)):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(30)
    threading.Timer(0.3, release.set).start()
    start = time.monotonic()
    with budget.reserve("second", (10, 6)):  # 60 + 60 > 100: waits for the first to finish
        waited = time.monotonic() - start
        assert budget.in_flight == 60
    holder.join()
    assert 0.25 < waited < 5 and budget.in_flight == 0

    impatient = PixelBudget(100, wait=0.2)
    with (
        impatient.reserve("first", (10, 6)),
        pytest.raises(ServiceError) as busy,
        impatient.reserve("second", (10, 6)),
    ):
        pass
    assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
    with (
        pytest.raises(ServiceError, match=r"big: 11x10 pixels is more than") as whole,
        impatient.reserve("big", (11, 10)),
    ):
        pass
    assert whole.value.status == 413 and impatient.in_flight == 0


def test_a_refused_upload_still_being_sent_gets_its_answer_not_a_reset(server):
    """Closing a connection with unread bytes resets it, and a reset can reach the client before it has
    read the answer: the server reads and drops the rest for a moment before it closes."""
    for _ in range(5):
        client = started(server, 30_000_000, PART)  # over --max-upload: refused at once
        sender = threading.Thread(target=send_until_closed, args=(client, 30_000_000))
        sender.start()
        status, headers, body = answer_then_close(client)
        sender.join(timeout=30)
        assert status == 413 and headers["connection"] == "close", body
        assert "larger than --max-upload" in body


def send_until_closed(client: socket.socket, size: int) -> None:
    with contextlib.suppress(OSError):  # the server may close before it has all
        client.sendall(b"x" * size)
