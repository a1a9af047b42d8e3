"""A real HTTP server on 127.0.0.1 that serves files by URL path, as `FACEREC_MIRROR` expects.

The real download code talks to it: tests point `FACEREC_MIRROR` at it to exercise fetching, checksum
checks and interrupted transfers without the network.
"""

from __future__ import annotations

import http.server
from dataclasses import dataclass, field
from pathlib import Path

from support import SHARED, material

MTCNN_URL_PATH = "/timesler/facenet-pytorch/raw/master/data/{}.pt"
VGGFACE2_URL_PATH = "/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CASIA_URL_PATH = "/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server: MirrorServer = self.server
        server.mirror.requests.append(self.path)
        source = server.mirror.files.get(self.path)
        if source is None:
            self.send_error(404)
            return
        data = Path(source).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path in server.mirror.cut_short:  # the connection drops halfway through the body
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class MirrorServer(http.server.ThreadingHTTPServer):
    mirror: Mirror


@dataclass
class Mirror:
    """A real HTTP server on 127.0.0.1 serving files by URL path, as FACEREC_MIRROR expects."""

    url: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    cut_short: set[str] = field(default_factory=set)

    def serve(self, url_path: str, source: Path) -> None:
        self.files[url_path] = Path(source)

    def serve_material(self, prefix: str = "") -> None:
        """Serve the material files under `prefix` at their github.com paths, as their homes do."""
        for entry in material.manifest():
            if entry.path.startswith(prefix):
                self.serve("/" + entry.home, SHARED / entry.path)

    def serve_mtcnn(self) -> None:
        self.serve_material("weights/mtcnn/")

    def serve_demo(self) -> None:
        """The demo's five-person set, where `facerec demo` fetches it."""
        self.serve_material("faces/knn/")
