"""What keeps the server bounded under load and against slow or hostile clients: how large a request
body may be, how long it may take to arrive, how many may be arriving at once, how many requests may
wait for the models, and how many decoded pixels may be in memory at once.

A request body is refused as soon as that is known, and the connection closed once the answer is sent
(the rest of the body is read and dropped for a moment first, as RFC 9112 section 9.6 asks: closing
with unread bytes resets the connection, and a reset can reach the client before it has read the
answer):

- 413 over `--max-upload`: at once when its Content-Length says so, else when the bytes received pass
  the limit;
- 408 when it stops arriving: no byte for `--read-timeout` seconds, or slower on average than
  MIN_BODY_RATE bytes a second beyond the first `--read-timeout` seconds (so a body of N bytes has at
  most `--read-timeout` + N / MIN_BODY_RATE seconds in all: a client sending a byte now and then cannot
  hold a connection, and a slow but honest link still gets a large photo through);
- 503 with Retry-After when `--max-uploads` bodies are already being received: clients that send slowly
  hold at most that many uploads in memory at once, each for a bounded time.

Image requests are admitted up to `--max-queue` at a time (waiting for the CPU stage or the backbone
included); one more is answered 503 at once with Retry-After, instead of joining a queue that would only
grow while clients time out. Decoding and detecting hold room in a budget of `--max-pixels-in-flight`
pixels (the image's size, read from its header before any pixel is decoded): an image larger than the
whole budget is refused 413, and one that does not fit beside those being decoded waits up to
`--pixel-wait` seconds for room, then is answered 503 with Retry-After.

uvicorn has no timeout for reading a request's headers: its keep-alive timeout runs only between two
requests of a connection, and stops at the first byte of the next. A client that sends headers slowly
holds its connection until it stops; headers are bounded in size (h11's 16 KiB) but not in time. A
reverse proxy in front (docs/serving.md) bounds that (nginx's client_header_timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec.errors import UsageError
from facerec.service.errors import ServiceError, error_response

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
RETRY_AFTER_S = 1
MIN_BODY_RATE = 64_000  # bytes a second a body must average beyond its first --read-timeout seconds
LINGER_S = 2.0  # seconds at most a refused body's rest is read and dropped after the answer
LINGER_IDLE_S = 0.5  # ... ending sooner once the client sends nothing for this long


class Admission:
    """At most `limit` image requests in the server at once; used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for the request's image work; ServiceError 503 when every place is taken."""
        if self.active >= self.limit:
            raise ServiceError(
                503,
                f"server busy: {self.limit} image requests are already being processed; try again",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def parse_size(text: str, option: str) -> int:
    """Bytes from `20MB`, `512KiB`, `1000000`: decimal units (kB, MB, GB) and binary (KiB, MiB, GiB)."""
    found = SIZE.match(text)
    unit = found.group(2).lower() if found else None
    if unit not in UNITS:
        raise UsageError(f"{option}: expected a size such as 20MB, 512KiB or 1000000, not '{text}'")
    return int(float(found.group(1)) * UNITS[unit])


class PixelBudget:
    """At most `limit` decoded pixels at once across the CPU threads; an image waits up to `wait` seconds
    for room. Thread-safe: the CPU threads reserve and release.

    Pixels, not bytes: an 8-bit RGB image takes 3 bytes a pixel, and decoding and detection make a few
    working copies. A waiting image can be overtaken by smaller ones that fit; it waits `wait` at most.
    """

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self.in_flight = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, name: str, size: tuple[int, int], frames: int = 1) -> Iterator[None]:
        """Hold room for the image `name` of `size` (width, height) while it is decoded and detected (a
        video: for `frames` frames of that size, as many as it keeps decoded at once); ServiceError 413
        when that is more than the whole budget, 503 when no room came in time."""
        pixels = self.hold(name, size, frames)
        try:
            yield
        finally:
            self.release(pixels)

    def hold(self, name: str, size: tuple[int, int], frames: int = 1) -> int:
        """`reserve`'s room taken until `release` gives it back (from any thread: a photo's room is
        taken on a CPU thread and given back once its faces are cut, after its detection in the
        detector's batch); the pixels held."""
        width, height = size
        pixels = width * height * frames
        if pixels > self.limit:
            what = (
                f"{width}x{height} pixels" if frames == 1 else f"{frames} frames of {width}x{height} pixels"
            )
            raise ServiceError(
                413,
                f"{name}: {what} is more than this server decodes at once (--max-pixels-in-flight {self.limit})",
            )
        with self._room:
            if not self._room.wait_for(lambda: self.in_flight + pixels <= self.limit, self.wait):
                raise ServiceError(
                    503,
                    f"server busy: {self.in_flight} pixels of other images are being decoded "
                    f"(--max-pixels-in-flight {self.limit}); try again",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self.in_flight += pixels
        return pixels

    def release(self, pixels: int) -> None:
        with self._room:
            self.in_flight -= pixels
            self._room.notify_all()


class BodyGuard:
    """ASGI middleware: every request body bounded in size (413), in time (408) and in number being
    received at once (503), as the module docstring says. A refused request's app sees the client
    leave (`http.disconnect`), its answer is dropped, and the refusal is answered instead."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float, max_uploads: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.max_uploads = max_uploads
        self.receiving = 0  # bodies being received now; used from the event loop only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"]) if scope["type"] == "http" else {}
        declared = headers.get(b"content-length", b"")
        if not (declared.strip(b"0") or b"transfer-encoding" in headers):  # no body to guard
            await self.app(scope, receive, send)
            return
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(receive, send, 413, _too_large(self.max_bytes))
            return
        if self.receiving >= self.max_uploads:
            busy = f"server busy: {self.max_uploads} uploads are already being received; try again"
            await _refuse(receive, send, 503, busy, {"Retry-After": str(RETRY_AFTER_S)})
            return
        body = _Body(self, receive, send)
        self.receiving += 1
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            if body.refusal is None:
                raise
        finally:
            body.finish()
        if body.refusal is not None and not body.answered:
            await _refuse(receive, send, *body.refusal)


class _Body:
    """One request's body as BodyGuard lets the app receive it: counted, timed, refused."""

    def __init__(self, guard: BodyGuard, receive: Receive, send: Send) -> None:
        self.guard = guard
        self._receive = receive
        self._send = send
        self.started = time.monotonic()
        self.received = 0
        self.complete = False
        self.answered = False  # the app started its answer
        self.refusal: tuple[int, str] | None = None
        self._counted = True  # still counted in guard.receiving

    async def receive(self) -> Message:
        if self.refusal is not None:
            return {"type": "http.disconnect"}
        if self.complete:  # after the body, a receive waits for the client to leave: not timed
            return await self._receive()
        guard = self.guard
        deadline = self.started + guard.read_timeout + self.received / MIN_BODY_RATE
        wait = min(guard.read_timeout, deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), max(wait, 0))
        except asyncio.TimeoutError:
            took = time.monotonic() - self.started
            return self._refused(
                408,
                f"the request body stopped coming: {self.received} bytes in {took:.0f} s (it may not pause "
                f"for --read-timeout {guard.read_timeout:g} s, nor average under {MIN_BODY_RATE // 1000} kB/s "
                "after that)",
            )
        self.received += len(message.get("body", b""))
        if self.received > guard.max_bytes:
            return self._refused(413, _too_large(guard.max_bytes))
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
            self.finish()
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is None:
            self.answered = self.answered or message["type"] == "http.response.start"
            await self._send(message)

    def _refused(self, status: int, message: str) -> Message:
        self.refusal = (status, message)
        self.finish()
        return {"type": "http.disconnect"}

    def finish(self) -> None:
        """No longer a body being received: it is complete, refused, or its request is over."""
        if self._counted:
            self._counted = False
            self.guard.receiving -= 1


def _too_large(limit: int) -> str:
    return f"the request body is larger than --max-upload ({limit} bytes)"


async def _refuse(
    receive: Receive, send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """Answer a refused body, then read and drop what the client goes on sending (LINGER_S at most,
    LINGER_IDLE_S without a byte) before the connection is closed. The answer's Content-Length tells
    the client where it ends; its body is only finished, and the connection closed, after that."""
    answer = error_response(status, message, {**(headers or {}), "Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": answer.raw_headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": True})
    end = time.monotonic() + LINGER_S
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            wait = min(LINGER_IDLE_S, end - time.monotonic())
            message = await asyncio.wait_for(receive(), max(wait, 0))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
    await send({"type": "http.response.body", "body": b""})
