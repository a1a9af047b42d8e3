"""The /v1/stream WebSocket: frames pushed by a client (the web page's camera), named as they come.

The protocol is docs/serving.md's (#the-stream). In short: the client sends frames as binary messages
(each one image: JPEG, PNG, WebP, ...), numbered from 0 in the order sent; the server answers, for each
frame it processed, what that frame completed (frame objects as `facerec watch --json --per-frame`
prints them, one detection round late, since a track is kept only once the next round finds it
again; track objects as `facerec watch --json` prints them, when tracks end or a named one changes
its name), then `{"done": N, "dropped": D}`.

The server never falls behind its client: one task receives messages as they come and keeps only the
newest frame waiting (a frame that arrives while another waits replaces it, and counts as dropped);
another task takes the waiting frame to the CPU pool (decoded with the photos' guards, holding room
for its pixels in the pixel budget, through the connection's Session), sends its answers and takes
the next. A client that sends one frame at a time, the next after `done`, has nothing dropped.

The connection is closed, after an `{"error": ...}` message giving the reason, with code 4000 + the
HTTP status that would say the same: 4400 for a message the protocol has no place for, 4401 without a
known key, 4408 when no message came for --read-timeout seconds while the server was waiting for
one, 1011 for an unexpected failure (logged in one line); a frame over --max-upload is closed 1009 by
the WebSocket layer itself (uvicorn's ws_max_size, facerec.service.server). A frame that cannot be used
(not an image, damaged, too many pixels, no room for them in time) is answered `{"error": "frame N:
..."}` and its `done`, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from facerec.errors import FacerecError
from facerec.service.auth import Keys, key_refusal
from facerec.service.errors import ServiceError
from facerec.service.models import Upload, image_header
from facerec.video.source import Frame

if TYPE_CHECKING:
    from facerec.service.models import Models
    from facerec.video.follow import Follower, Session

NAME = "camera"  # the `video` of the stream's frame and track objects
NOMINAL_FPS = 5.0  # a Session's expected frame rate; it only matters without a fixed stride
CLOSE_INTERNAL = 1011
log = logging.getLogger("uvicorn.error")


class Closing(Exception):
    """End the connection: say `message` as {"error": ...}, then close with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Gone(Exception):
    """The client closed the connection: nothing more to send."""


@dataclass
class Waiting:
    """The newest frame received and not yet taken: its number, arrival time (s from the first), bytes."""

    number: int
    time: float
    data: bytes


class Stream:
    """One accepted /v1/stream connection, followed by `following`'s Session (see the module docstring)."""

    def __init__(self, websocket: WebSocket, models: Models, following: Follower, idle_s: float) -> None:
        self.websocket = websocket
        self.models = models
        self.session: Session = following.session(NAME, NOMINAL_FPS, live=True)
        self.idle_s = idle_s
        self.waiting: Waiting | None = None
        self.arrived = asyncio.Event()  # a frame is waiting, or the client asked to finish
        self.received = 0  # frames received, the dropped ones included
        self.dropped = 0
        self.first: float | None = None  # when the first frame arrived (monotonic)
        self.busy = False  # a frame is being processed: the client waits for us, not we for it
        self.finishing = False

    async def authenticate(self, keys: Keys) -> None:
        """The first message must be {"key": KEY} with a known key; Closing 4401 otherwise."""
        message = await self._next_message()
        text = message.get("text")
        key = _parsed(text).get("key") if text is not None else None
        if not isinstance(key, str) or not key.strip():
            raise Closing(4401, 'an API key is needed: send {"key": KEY} as the first message')
        refusal = key_refusal(keys, key.strip(), "read")
        if refusal is not None:
            raise Closing(4000 + refusal[0], refusal[1])

    async def run(self) -> None:
        """Receive and process until the client finishes or leaves; then close as the module says."""
        receiving = asyncio.create_task(self._receive())
        working = asyncio.create_task(self._work())
        try:
            done, _ = await asyncio.wait({receiving, working}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            receiving.cancel()
            working.cancel()

    async def _next_message(self) -> dict[str, Any]:
        """The next message; Closing 4408 after --read-timeout seconds without one while nothing is
        being processed, Gone when the client left."""
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), self.idle_s)
                break
            except asyncio.TimeoutError:
                if not (self.busy or self.waiting):
                    raise Closing(4408, f"no frame for {self.idle_s:g} s: closing the stream") from None
        if message["type"] == "websocket.disconnect":
            raise Gone
        return message

    async def _receive(self) -> None:
        """Keep the newest frame waiting; note a request to finish. Returns after {"finish": true}."""
        while True:
            message = await self._next_message()
            data = message.get("bytes")
            if data is not None:
                now = time.monotonic()
                self.first = now if self.first is None else self.first
                self.dropped += self.waiting is not None
                self.waiting = Waiting(self.received, now - self.first, data)
                self.received += 1
                self.arrived.set()
                continue
            said = _parsed(message.get("text") or "")
            if said.get("finish") is True:
                self.finishing = True
                self.arrived.set()
                return
            if "key" not in said:  # a key again, or one a server without keys does not need: ignored
                raise Closing(4400, 'expected a frame (a binary message), {"finish": true} or {"key": KEY}')

    async def _work(self) -> None:
        """Process the waiting frame, send its answers, again; at the end, what finishing completes."""
        while True:
            if self.waiting is None and not self.finishing:
                self.arrived.clear()
                await self.arrived.wait()
            if self.waiting is not None:
                frame, self.waiting = self.waiting, None
                self.busy = True
                try:
                    said = await self.models.on_cpu(self._take, frame)
                finally:
                    self.busy = False
                await self._send([*said, {"done": frame.number, "dropped": self.dropped}])
            elif self.finishing:
                await self._send(await self.models.on_cpu(self._finish))
                await self.websocket.close(1000)
                return

    def _take(self, waiting: Waiting) -> list[dict[str, Any]]:
        """What frame `waiting` completes, or its error (see the module docstring); on a CPU thread."""
        upload = Upload(f"frame {waiting.number}", waiting.data)
        try:
            _, size = image_header(upload)
            with self.models.pixels.reserve(upload.name, size):
                frame = Frame(waiting.number, waiting.time, self.models.decoded(upload))
                return [event.to_json() for event in self.session.take(frame)]
        except ServiceError as error:
            return [{"error": str(error)}]
        except FacerecError as error:  # a gallery rebuilt with other models meanwhile, say
            return [{"error": f"{upload.name}: {error}"}]

    def _finish(self) -> list[dict[str, Any]]:
        return [event.to_json() for event in self.session.finish()]

    async def _send(self, messages: list[dict[str, Any]]) -> None:
        try:
            for message in messages:
                await self.websocket.send_text(json.dumps(message))
        except WebSocketDisconnect:
            raise Gone from None


def _parsed(text: str) -> dict[str, Any]:
    """A text message as a JSON object; Closing 4400 when it is not one."""
    try:
        said = json.loads(text)
    except ValueError:
        said = None
    if not isinstance(said, dict):
        raise Closing(4400, "a text message must be a JSON object")
    return said


async def serve(websocket: WebSocket, stream: Stream, keys: Keys | None) -> None:
    """Run an accepted stream to its end: the key first when `keys` asks for it (the client sent no
    Authorization header), {"ready": ...}, the frames; every ending as the module docstring says."""
    try:
        try:
            if keys:
                await stream.authenticate(keys)
            await websocket.send_text(json.dumps({"ready": True, "video": NAME}))
            await stream.run()
        except WebSocketDisconnect:
            raise Gone from None
    except Gone:
        return
    except Closing as closing:
        await _close(websocket, closing.code, str(closing))
    except Exception as error:
        line = f"internal error: {type(error).__name__}: {error}"
        if os.environ.get("FACEREC_DEBUG"):
            raise
        log.error("WebSocket /v1/stream: %s (set FACEREC_DEBUG=1 for the traceback)", line)
        await _close(websocket, CLOSE_INTERNAL, line)


async def _close(websocket: WebSocket, code: int, message: str) -> None:
    """Say `message` as {"error": ...} and close with `code` (the reason: the message, cut to the
    123 bytes a close frame allows)."""
    line = " ".join(message.split())
    try:
        await websocket.send_text(json.dumps({"error": line}))
        await websocket.close(code, line.encode()[:123].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError):  # the client left meanwhile
        pass
