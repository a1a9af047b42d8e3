"""Shared test fixtures: the test material, seeded weights, a real HTTP mirror on loopback, the CLI.

Nothing here stands in for a part of the engine: the mirror is a real HTTP server the real download code
talks to, the CLI runs as a real subprocess. The material (photos, MTCNN weights, facenet-pytorch's
reference outputs) is ../shared when it is beside the checkout, else fetched once into the user cache by
tests/material.py before any test module reads it.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import material
import pytest

ROOT = material.ROOT
SHARED = material.root()  # ../shared, or a folder of the same layout in the user cache
SHAPES = SHARED / material.SHAPES
MTCNN_URL_PATH = "/timesler/facenet-pytorch/raw/master/data/{}.pt"
VGGFACE2_URL_PATH = "/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CASIA_URL_PATH = "/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fetch the material (when ../shared is not there) before collection: test modules read it on import.

    Without it nothing can be tested, so the session stops at once with one line saying what is needed.
    """
    if SHARED == material.NEIGHBOUR:
        return
    try:
        material.prepare(SHARED, say=session.config.get_terminal_writer().line)
    except material.MaterialError as error:
        raise pytest.UsageError(str(error)) from None


def make_seeded_weights(path: Path, salt: int = 0, with_logits: bool = True) -> Path:
    """Write facenet-pytorch-layout seeded weights (see tests/seeded_weights.py) to `path`."""
    import torch
    from seeded_weights import seeded_state_dict

    shapes = json.loads(SHAPES.read_text())
    if not with_logits:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("logits.")}
    torch.save(seeded_state_dict(shapes, salt), path)
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


KNN_TRAIN = SHARED / "faces" / "knn" / "train"


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose cache holds the MTCNN weights of ../shared (linked, not copied)."""
    home = tmp_path_factory.getbasetemp() / "torch-home-mtcnn"
    (home / "checkpoints").mkdir(parents=True, exist_ok=True)
    for net in ("pnet", "rnet", "onet"):
        link = home / "checkpoints" / f"{net}.pt"
        if not link.exists():
            link.symlink_to(SHARED / "weights" / "mtcnn" / f"{net}.pt")
    return home


@pytest.fixture(scope="session")
def face_cache(tmp_path_factory, torch_home) -> Path:
    """A face cache holding the MTCNN crops of the knn training set (shared by this session's tests)."""
    root = tmp_path_factory.getbasetemp() / "face-cache"
    from facerec.engine import build_pipeline
    from facerec.training.facecache import FaceCache

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        cache = FaceCache(root, build_pipeline(embed=False))
        images = sorted(KNN_TRAIN.glob("*/*"))
        from facerec.weights import sha256_file

        crops = cache.crops([(str(p), sha256_file(p)) for p in images], lambda message: None)
    assert all(crops), "every knn training image has a face"
    return root


@pytest.fixture
def env(torch_home) -> dict[str, str]:
    return {"TORCH_HOME": str(torch_home)}
