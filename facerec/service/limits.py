"""What keeps the server bounded under load: how large a request may be, and how many may wait for
the models at once.

A request body over `--max-upload` is answered 413 as soon as that is known: at once when its
Content-Length says so, else when the bytes received pass the limit (the rest is never read). Image
requests are admitted up to `--max-queue` at a time (waiting for the CPU stage or the backbone
included); one more is answered 503 at once with Retry-After, instead of joining a queue that would only
grow while clients time out.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec.errors import UsageError
from facerec.service.errors import ServiceError, error_response

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
RETRY_AFTER_S = 1


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


class BodyLimit:
    """ASGI middleware: 413 {"error": ...} for a request body larger than `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self.refuse(scope, receive, send)
            return
        received = 0
        over = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # the app sees the client leave, and its answer is dropped
                over = True
                return {"type": "http.disconnect"}
            return message

        async def unless_over(message: Message) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over:
            await self.refuse(scope, receive, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than --max-upload ({self.limit} bytes)"
        await error_response(413, message, {"Connection": "close"})(scope, receive, send)
