"""Starting `facerec serve`: the models loaded once, the address checked and bound, uvicorn run.

Models load before the socket is bound, so a bad option or a missing weights file ends the command with
one line and nothing ever listened. The socket is bound and listening before the address is printed
(`--port 0` takes a free port and prints which): a client that connects at once waits in the backlog
until uvicorn accepts.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from facerec.errors import UsageError
from facerec.gallery.models import ModelRequest, open_pipeline
from facerec.gallery.stores import open_store
from facerec.service.app import Service, Settings, create_app
from facerec.service.models import Models, warm_up

BACKLOG = 512


def open_service(
    settings: Settings, request: ModelRequest, max_faces: int, max_wait: float, workers: int | None
) -> Service:
    """The gallery's models (for a gallery not written yet, those `request` names), loaded once; the
    batching and CPU pool settings are facerec.service.models.Models's."""
    snapshot = open_store(settings.gallery).read()
    try:
        recorded = snapshot.provenance if snapshot else None
    finally:
        if snapshot is not None:
            snapshot.close()
    pipeline, made = open_pipeline(recorded, request, settings.gallery)
    warm_up(pipeline)
    return Service(settings, Models(pipeline, made, max_faces, max_wait, workers))


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

    config = uvicorn.Config(
        create_app(service),
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    view = service.gallery.current()
    where = f"{view.version}, {view.face_count} faces" if view.version else "nothing enrolled yet"
    print(
        f"facerec serve: {url_of(listener)} (gallery {Path(service.settings.gallery)}, {where})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(config).run(sockets=[listener])
