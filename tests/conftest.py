"""Shared test fixtures: the ../shared material, seeded weights, a real HTTP mirror on loopback, the CLI.

Nothing here stands in for a part of the engine: the mirror is a real HTTP server the real download code
talks to, the CLI runs as a real subprocess.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHAPES = SHARED / "reference" / "inception_resnet_v1.shapes.json"
MTCNN_URL_PATH = "/timesler/facenet-pytorch/raw/master/data/{}.pt"
VGGFACE2_URL_PATH = "/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CASIA_URL_PATH = "/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt"
DEMO_URL_PATH = "/ageitgey/face_recognition/raw/master/"

if not SHARED.is_dir():  # never skip silently: without ../shared the suite cannot say anything
    raise RuntimeError(f"{SHARED} is missing: the tests read real photos and references from it")


def _seeded_module():
    spec = importlib.util.spec_from_file_location("seeded_weights", SHARED / "tools" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_seeded_weights(path: Path, salt: int = 0, with_logits: bool = True) -> Path:
    """Write facenet-pytorch-layout seeded weights (see ../shared/tools/seeded_weights.py) to `path`."""
    import json

    import torch

    shapes = json.loads(SHAPES.read_text())
    if not with_logits:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("logits.")}
    torch.save(_seeded_module().seeded_state_dict(shapes, salt), path)
    return path


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory) -> Path:
    """Seeded Inception-ResNet-v1 weights, salt 0, with the 8631-class logits (as vggface2 ships)."""
    return make_seeded_weights(tmp_path_factory.mktemp("weights") / "seeded-salt0.pt", 0)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server: _MirrorServer = self.server
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


class _MirrorServer(http.server.ThreadingHTTPServer):
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

    def serve_mtcnn(self) -> None:
        for net in ("pnet", "rnet", "onet"):
            self.serve(MTCNN_URL_PATH.format(net), SHARED / "weights" / "mtcnn" / f"{net}.pt")

    def serve_demo(self) -> None:
        for line in (SHARED / "faces" / "knn" / "SHA256SUMS").read_text().splitlines():
            relative = line.split("  ", 1)[1]
            local = SHARED / "faces" / "knn" / relative.removeprefix("examples/knn_examples/")
            self.serve(DEMO_URL_PATH + relative, local)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback mirror; FACEREC_MIRROR points at it and TORCH_HOME at an empty cache for this test."""
    server = _MirrorServer(("127.0.0.1", 0), _Handler)
    server.mirror = Mirror(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("FACEREC_MIRROR", server.mirror.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    try:
        yield server.mirror
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No mirror and a port nothing listens on: every download fails as it does offline."""
    monkeypatch.setenv("FACEREC_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run `python -m facerec ARGS` as a real subprocess with this test's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "facerec", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli
