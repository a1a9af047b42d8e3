"""Downloading and loading weight files: cached where facenet-pytorch caches them, verified, never pickle.

Every download goes through `download`: `FACEREC_MIRROR` may replace the scheme and host, the bytes go to
a temporary file beside the target and are renamed into place only when complete and verified. Files
without a pinned SHA-256 have theirs recorded on first sight (in `SHA256SUMS` in the cache folder) and
checked on every later load; a user pins a file by writing its line there before the first download.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import requests

if TYPE_CHECKING:
    import torch

from facerec.atomic import write_atomically
from facerec.errors import FacerecError

RECORD_NAME = "SHA256SUMS"
CHUNK = 1 << 20
TIMEOUT = (10, 60)  # connect, read (seconds)


@dataclass(frozen=True)
class WeightFile:
    """A downloadable weight file: where it lives, its name in the cache and, when known, its SHA-256."""

    url: str
    filename: str
    sha256: str | None = None


def cache_dir() -> Path:
    """`$TORCH_HOME/checkpoints`, with TORCH_HOME defaulting as torch does."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.path.join(xdg, "torch")
    return Path(torch_home) / "checkpoints"


def mirrored(url: str) -> str:
    """The URL with scheme and host replaced by `FACEREC_MIRROR` when that is set; the path is kept."""
    mirror = os.environ.get("FACEREC_MIRROR", "").strip()
    if not mirror:
        return url
    base = urlsplit(mirror.rstrip("/"))
    parts = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path + parts.path, parts.query, ""))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, label: str):
    """A progress bar on stderr when stderr is a terminal, else a silent stand-in."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not sys.stderr.isatty())


def download(url: str, target: Path, sha256: str | None = None) -> str:
    """Download `url` (mirrored) to `target` atomically; returns the SHA-256 of the bytes.

    Raises FacerecError naming the URL when the network or the server fails, or when `sha256` is given
    and the bytes differ; `target` is then untouched.
    """
    source = mirrored(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with requests.get(source, stream=True, timeout=TIMEOUT) as response:
                    response.raise_for_status()
                    size = int(response.headers.get("Content-Length") or 0) or None
                    with _progress(size, target.name) as bar:
                        for block in response.iter_content(CHUNK):
                            out.write(block)
                            digest.update(block)
                            bar.update(len(block))
            except requests.RequestException as error:
                raise FacerecError(
                    f"cannot download {source}: {_reason(error)}; put a copy at {target} (for a backbone, "
                    "--weights FILE also works), or set FACEREC_MIRROR to a server that has it"
                ) from None
        actual = digest.hexdigest()
        if sha256 and actual != sha256.lower():
            raise FacerecError(f"downloaded {source} has SHA-256 {actual}, expected {sha256}; not used")
        os.replace(temp_name, target)
        return actual
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def _reason(error: requests.RequestException) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    if isinstance(error, requests.ConnectionError):
        return "no connection (offline?)"
    if isinstance(error, requests.Timeout):
        return "timed out"
    return type(error).__name__


def recorded_sums(folder: Path) -> dict[str, str]:
    """The SHA-256 lines recorded (or pinned by the user) in `folder/SHA256SUMS`, by file name."""
    record = folder / RECORD_NAME
    if not record.exists():
        return {}
    sums = {}
    for line in record.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            sums[name] = digest.lower()
    return sums


def _record(folder: Path, filename: str, digest: str) -> None:
    sums = recorded_sums(folder)
    sums[filename] = digest
    text = "".join(f"{value}  {name}\n" for name, value in sorted(sums.items()))
    write_atomically(folder / RECORD_NAME, lambda out: out.write(text.encode()))


def fetch(weight: WeightFile) -> tuple[Path, str]:
    """The cached, verified file for `weight` (downloading it when missing) and its SHA-256."""
    folder = cache_dir()
    target = folder / weight.filename
    expected = (weight.sha256 or recorded_sums(folder).get(weight.filename) or "").lower() or None
    if target.exists():
        actual = sha256_file(target)
        if expected and actual != expected:
            raise FacerecError(
                f"{target} has SHA-256 {actual}, expected {expected}; delete it to download it again"
            )
    else:
        actual = download(weight.url, target, expected)
    if not expected:
        _record(folder, weight.filename, actual)
    return target, actual


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `path`, loaded with weights_only=True; one clear error for anything else."""
    import torch  # here, not at the top: galleries check weights by SHA-256 without loading torch

    path = Path(path)
    if not path.is_file():
        raise FacerecError(f"{path}: no such weights file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files; all mean "not usable weights"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FacerecError(f"{path}: not a weights file that loads safely ({first_line})") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise FacerecError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return dict(loaded)
