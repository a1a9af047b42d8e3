"""Starting `facerec serve`: the models loaded once, the address checked and bound, uvicorn run.

Models load before the socket is bound, so a bad option or a missing weights file ends the command with
one line and nothing ever listened. The socket is bound and listening before the address is printed
(`--port 0` takes a free port and prints which): a client that connects at once waits in the backlog
until uvicorn accepts.

uvicorn's logs show each request's path without its query string: a query can carry a secret
(`?api_key=...`, refused 401 all the same), and a log is read by more people than the keys are meant
for.
"""

from __future__ import annotations

import copy
import gc
import logging
import socket
import sys
from typing import Any

from facerec.errors import UsageError
from facerec.gallery.models import ModelRequest, open_pipeline
from facerec.gallery.stores import open_store
from facerec.service.app import Service, Settings, create_app
from facerec.service.limits import PixelBudget
from facerec.service.models import Models, warm_up

BACKLOG = 512


def open_service(
    settings: Settings,
    request: ModelRequest,
    max_faces: int,
    max_wait: float,
    workers: int | None,
    max_images: int = 16,
) -> Service:
    """The gallery's models (for a gallery not written yet, those `request` names), loaded once; the
    batching and CPU pool settings are facerec.service.models.Models's."""
    store = open_store(settings.gallery)  # its location names it in messages (a URI's password as ***)
    snapshot = store.read()
    try:
        recorded = snapshot.provenance if snapshot else None
    finally:
        if snapshot is not None:
            snapshot.close()
    pipeline, made = open_pipeline(recorded, request, store.location)
    warm_up(pipeline)
    pixels = PixelBudget(settings.max_pixels, settings.pixel_wait)
    return Service(settings, Models(pipeline, made, pixels, max_faces, max_wait, workers, max_images))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (0: any free port); UsageError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(BACKLOG)
    except OSError as error:
        listener.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
    return listener


def url_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(service: Service, listener: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM finish the requests under way, then stop)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    config = uvicorn.Config(
        create_app(service),
        log_config=log_config(LOGGING_CONFIG),
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=10,
        ws_max_size=service.settings.max_upload,  # a stream's frame is bounded as an upload is
    )
    view = service.gallery.current()
    where = f"{view.version}, {view.face_count} faces" if view.version else "nothing enrolled yet"
    print(
        f"facerec serve: {url_of(listener)} (gallery {service.store.location}, {where})",
        file=sys.stderr,
        flush=True,
    )
    # What start-up made (torch, the models, the app) lives as long as the server: frozen, it is left
    # out of every later collection, which would otherwise walk its hundreds of thousands of objects
    # each time, holding the interpreter's lock, while requests wait. Start-up's garbage is collected
    # first, or it would be frozen with the rest and never freed.
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[listener])


class WithoutQuery(logging.Filter):
    """Cuts the query string off every argument of an access log record, and of the line uvicorn logs
    (on its error log) for each WebSocket handshake: uvicorn passes the request target (its path
    percent-quoted, so a literal '?' can only start the query) as one of them. Other records of the
    error log are left whole (their text may hold a '?' of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        target = record.name == "uvicorn.access" or '"WebSocket %s"' in str(record.msg)
        if target and isinstance(record.args, tuple):
            record.args = tuple(arg.partition("?")[0] if isinstance(arg, str) else arg for arg in record.args)
        return True


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging configuration `base` with WithoutQuery on the handlers of both its logs."""
    config = copy.deepcopy(base)
    config.setdefault("filters", {})["without_query"] = {"()": WithoutQuery}
    for handler in ("access", "default"):
        config["handlers"][handler].setdefault("filters", []).append("without_query")
    return config
