"""Fixtures only: seeded weights, a loopback mirror, the CLI, a TORCH_HOME with MTCNN, a face cache.

Helpers live in the `support` package (tests/support/); the material is read through it. Nothing here
stands in for a part of the engine: the mirror is a real HTTP server the real download code talks to,
the CLI runs as a real subprocess.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from support import KNN_TRAIN, MTCNN_WEIGHTS, SHARED, material
from support.cli import run_cli
from support.mirror import Handler, Mirror, MirrorServer
from support.seeded_weights import make_seeded_weights

# The commands default to --precision auto, which measures once per machine and model in each TORCH_HOME
# (calibrating int8 first): seconds in every test with a fresh cache. The session runs at fp32 instead;
# tests/pipeline/test_precision.py clears this to test auto.
os.environ.setdefault("FACEREC_PRECISION", "fp32")


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as from a terminal, and threads shared out (below).

    The tests stop servers with SIGINT, as Ctrl-C. A suite started with SIGINT ignored (a background job
    of a non-interactive shell is) passes that on to every process it starts through exec, and a server
    that ignores it from its start never ends: each process takes SIGINT back, so its children start
    with it at the default, as a user's would.

    The workers share the cores: each process (a worker, the CLI runs it starts) takes its share of
    threads, as oversubscribed OpenMP threads spin against each other. The processes started from here
    read OMP_NUM_THREADS; this worker imported torch before, so it is told too. Not in pytest-xdist's
    controller, whose environment the workers inherit: the count is known in each worker."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers is None and config.getoption("numprocesses", None):
        return  # the controller
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (workers or 1))))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory) -> Path:
    """Seeded Inception-ResNet-v1 weights, salt 0, with the 8631-class logits (as vggface2 ships)."""
    return make_seeded_weights(tmp_path_factory.mktemp("weights") / "seeded-salt0.pt", 0)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback mirror; FACEREC_MIRROR points at it and TORCH_HOME at an empty cache for this test."""
    server = MirrorServer(("127.0.0.1", 0), Handler)
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


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose cache holds the MTCNN weights of ../shared (linked, not copied)."""
    home = tmp_path_factory.getbasetemp() / "torch-home-mtcnn"
    (home / "checkpoints").mkdir(parents=True, exist_ok=True)
    for net in ("pnet", "rnet", "onet"):
        link = home / "checkpoints" / f"{net}.pt"
        if not link.exists():
            link.symlink_to(MTCNN_WEIGHTS / f"{net}.pt")
    return home


@pytest.fixture(scope="session")
def face_cache(tmp_path_factory, torch_home) -> Path:
    """A face cache holding the MTCNN crops of the knn training set (shared by this session's tests)."""
    root = tmp_path_factory.getbasetemp() / "face-cache"
    from facerec.pipeline.engine import build_pipeline
    from facerec.training.facecache import FaceCache

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        cache = FaceCache(root, build_pipeline(embed=False))
        images = sorted(KNN_TRAIN.glob("*/*"))
        from facerec.pipeline.weights import sha256_file

        crops = cache.crops([(str(p), sha256_file(p)) for p in images], lambda message: None)
    assert all(crops), "every knn training image has a face"
    return root


@pytest.fixture
def env(torch_home) -> dict[str, str]:
    return {"TORCH_HOME": str(torch_home)}
