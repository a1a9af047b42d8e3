"""Test material (real photos, MTCNN weights, facenet-pytorch's reference outputs): found, or fetched once.

In this team's workspace the material lies in ../shared beside the checkout and is used where it lies,
with no network. In anyone else's clone it is fetched once from its public homes on github.com (through
FACEREC_MIRROR, with facerec's own download code), checked against the SHA-256s pinned in
tests/support/material.sha256, and cached under $XDG_CACHE_HOME/facerec/test-material in ../shared's layout. The
references are facenet-pytorch's own outputs, so they are remade there instead, by tests/support/references.py
running facenet-pytorch 2.6.0 from the package registry. Nothing third-party is committed: the manifest
holds paths and SHA-256s only. Without ../shared and without the network the suite stops at once, with
one line saying what it needs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facerec.errors import FacerecError
from facerec.pipeline.weights import download, sha256_file

ROOT = Path(__file__).resolve().parents[2]
NEIGHBOUR = ROOT.parent / "shared"
MANIFEST = Path(__file__).with_name("material.sha256")
REMAKER = Path(__file__).with_name("references.py")
GITHUB = "https://github.com/"
FACENET_PYTORCH = "facenet-pytorch==2.6.0"
FACENET_PYTORCH_WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
SHAPES = "reference/inception_resnet_v1.shapes.json"
BACKBONE = "reference/inception_resnet_v1.salt0.json"
PIPELINE = "reference/pipeline.salt0.json"
REFERENCES = (SHAPES, BACKBONE, PIPELINE)
NEEDS = (
    f"the tests need {NEIGHBOUR} beside the checkout, or the network to fetch their material once "
    "(github.com, or a mirror of its paths in FACEREC_MIRROR=http://host:port; facenet-pytorch 2.6.0 "
    "from the package registry)"
)


class MaterialError(Exception):
    """The material can be neither found nor fetched; the message is one line saying what is needed."""


@dataclass(frozen=True)
class Entry:
    """One file of the material: its pinned SHA-256, its path in the material folder, its path on github.com."""

    sha256: str
    path: str
    home: str

    @property
    def url(self) -> str:
        return GITHUB + self.home


def manifest() -> list[Entry]:
    """The pinned files, in the manifest's order (comment lines start with '#')."""
    lines = MANIFEST.read_text().splitlines()
    return [Entry(*line.split("  ")) for line in lines if line and not line.startswith("#")]


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/facerec/test-material`, XDG_CACHE_HOME defaulting to ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "facerec" / "test-material"


def root() -> Path:
    """Where the tests read their material: ../shared when it is there, else the cache."""
    return NEIGHBOUR if NEIGHBOUR.is_dir() else cache_root()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock file `path`, so that two test sessions starting together fetch and install once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch(folder: Path, say: Callable[[str], None] = print) -> None:
    """Make every manifest file present and intact in `folder`, downloading those missing or damaged."""
    missing = [
        e
        for e in manifest()
        if not ((folder / e.path).is_file() and sha256_file(folder / e.path) == e.sha256)
    ]
    if missing:
        say(f"test material: fetching {len(missing)} files into {folder}")
    for entry in missing:
        try:
            download(entry.url, folder / entry.path, sha256=entry.sha256)
        except FacerecError as error:  # its first clause names the URL and what went wrong
            raise MaterialError(f"{NEEDS}: {str(error).partition('; ')[0]}") from None


def facenet_pytorch(say: Callable[[str], None] = print) -> Path:
    """The folder holding facenet-pytorch 2.6.0 (installed there from the package registry when missing,
    without its stale dependency pins: the test environment already has torch, numpy and Pillow)."""
    site = cache_root() / "facenet-pytorch"
    with _locked(site.with_name(".facenet-pytorch.lock")):
        if not (site / "facenet_pytorch-2.6.0.dist-info").is_dir():
            say(f"test material: installing {FACENET_PYTORCH} into {site}")
            _pip_install(site)
    return site


def _pip_install(site: Path) -> None:
    """`pip install --no-deps --target` into a temporary folder renamed into place when complete, the
    wheel checked against its pinned SHA-256."""
    with tempfile.TemporaryDirectory(dir=site.parent) as work:
        requirement = Path(work) / "requirements.txt"
        requirement.write_text(f"{FACENET_PYTORCH} --hash=sha256:{FACENET_PYTORCH_WHEEL_SHA256}\n")
        target = Path(work) / "site"
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
        command += ["--require-hashes", "--target", str(target), "-r", str(requirement)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise MaterialError(f"{NEEDS}: pip cannot install {FACENET_PYTORCH}: {_last_line(result.stderr)}")
        shutil.rmtree(site, ignore_errors=True)
        target.rename(site)


def remake(folder: Path, photos: Sequence[str] = (), say: Callable[[str], None] = print) -> None:
    """Write the references into `folder/reference` from the photos in `folder`, by running
    tests/support/references.py with facenet-pytorch importable (only `photos` in the pipeline's when given)."""
    site = facenet_pytorch(say)
    say(f"test material: remaking the references in {folder / 'reference'} with {FACENET_PYTORCH}")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    )
    command = [sys.executable, str(REMAKER), str(folder), *photos]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise MaterialError(
            f"remaking the references with {FACENET_PYTORCH} failed: {_last_line(result.stderr)}"
        )


def prepare(folder: Path, say: Callable[[str], None] = print) -> None:
    """Everything the tests read, in `folder`: the manifest's files, then the references (remade only
    when one is missing; each is written whole or not at all)."""
    with _locked(folder / ".lock"):
        fetch(folder, say)
        if not all((folder / reference).is_file() for reference in REFERENCES):
            remake(folder, say=say)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
