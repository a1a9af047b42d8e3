"""A gallery version's `manifest.json`: what its files were when written, and checking bytes against it.

Every file of a version is recorded with its size, its SHA-256 and the XXH3-64 of each BLOCK of its
bytes (the `xxhash` package):

    {"block": 1048576, "files": {"vectors.npy": {"size": N, "sha256": "...", "xxh3_64": ["...", ...]}, ...}}

Why both: SHA-256 names the file for good (any tool can check it), but at about 1.3 GB/s a core it is too
slow to check a million faces' files (some 5 GB) on every open; XXH3 runs at about 25 GB/s, so a file is
checked as it is read for a few percent more than the reading. Why blocks: a damaged block names the
rows of vectors.npy it holds (512 faces of 512-d a MiB), so a repair embeds those faces again and keeps
the rest. Checking is against damage, not against someone who rewrites a file and the manifest together.

Versions written before block checksums (a manifest without `block`) are checked by their SHA-256, the
whole file at once; versions written before manifests by their sizes and shapes alone (facerec.gallery.local.folder).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

MANIFEST_FILE = "manifest.json"
BLOCK = 2**20  # bytes a checksum covers: 512 vectors of 512-d, 2,048 lines of manifest for a million faces
CHUNK = 2**20  # bytes read at a time where no block checksums were recorded


@dataclass(frozen=True)
class Check:
    """What checking a file's bytes found: `problem` (None: intact) and the damaged blocks (None: the
    file as a whole is not as recorded, or nothing finer was recorded)."""

    problem: str | None = None
    bad_blocks: list[int] | None = None


@dataclass(frozen=True)
class Manifest:
    """The recorded files of a version, by path inside it (`head/faiss.index`)."""

    files: dict[str, dict[str, Any]]
    block: int | None  # None: written before block checksums; files are checked by SHA-256

    def size_problem(self, folder: Path, name: str) -> str | None:
        """Whether file `name` is recorded, present and of its recorded size (cheap: no byte is read)."""
        expected = self.files.get(name)
        if expected is None:
            return f"{name} is not in {MANIFEST_FILE}"
        try:
            size = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if size != expected["size"]:
            return f"{name} is {size} bytes, expected {expected['size']}"
        return None

    def check_file(self, folder: Path, name: str, full: bool = False) -> Check:
        """Read file `name` once, in blocks, and check its bytes (with `full`, its SHA-256 too)."""
        problem = self.size_problem(folder, name)
        if problem is not None:
            return Check(problem)
        with open(folder / name, "rb") as file:
            return self.check_blocks(name, iter(lambda: file.read(self.block or CHUNK), b""), full)

    def check_bytes(self, name: str, data: memoryview, full: bool = False) -> Check:
        """Check the bytes of file `name` already in memory (or mapped), without copying them."""
        size = self.block or CHUNK
        return self.check_blocks(
            name, (data[start : start + size] for start in range(0, len(data), size)), full
        )

    def check_blocks(self, name: str, blocks: Iterable[Any], full: bool = False) -> Check:
        """Check file `name`, given as its consecutive blocks of `block` bytes (the last may be short)."""
        record = self.files[name]
        sums = record.get("xxh3_64") if self.block else None
        sha = hashlib.sha256() if sums is None or full else None
        bad, count = [], 0
        for count, block in enumerate(blocks, 1):
            if sums is not None and (count > len(sums) or xxhash.xxh3_64_hexdigest(block) != sums[count - 1]):
                bad.append(count - 1)
            if sha is not None:
                sha.update(block)
        if sums is not None and count != len(sums):
            return Check(f"{name} does not match its recorded checksums")
        if bad:
            return Check(f"{name} does not match its recorded checksum", bad)
        if sha is not None and sha.hexdigest() != record["sha256"]:
            return Check(f"{name} does not match its recorded SHA-256")
        return Check()


def read_manifest(folder: Path) -> tuple[Manifest | None, str | None]:
    """The manifest of a version (None for a version written before manifests), and what is wrong with
    the manifest itself."""
    try:
        recorded = json.loads((folder / MANIFEST_FILE).read_text("utf-8"))
        files, block = recorded["files"], recorded.get("block")
        if not isinstance(files, dict) or not (block is None or (isinstance(block, int) and block > 0)):
            raise TypeError("not a manifest")
    except FileNotFoundError:
        return None, None
    except PermissionError:
        raise  # the system refuses it: not damage to rebuild (the store says so in its own line)
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{MANIFEST_FILE} is unreadable"
    return Manifest(files, block), None


def write_manifest(folder: Path, known: dict[str, dict[str, Any]] | None = None) -> None:
    """Record every file of the version being written in `folder` (each read once), but those whose
    records are `known` (files linked from a version whose manifest they were just checked against)."""
    known = known or {}
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        files[name] = known[name] if name in known else _record(file)
    text = json.dumps({"block": BLOCK, "files": files}, indent=1) + "\n"
    (folder / MANIFEST_FILE).write_text(text, "utf-8")


def _record(file: Path) -> dict[str, Any]:
    sha, sums, size = hashlib.sha256(), [], 0
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            sha.update(block)
            sums.append(xxhash.xxh3_64_hexdigest(block))
            size += len(block)
    return {"size": size, "sha256": sha.hexdigest(), "xxh3_64": sums}


def rows_in_blocks(blocks: list[int], block: int, offset: int, row_bytes: int, rows: int) -> Iterator[int]:
    """The rows of a matrix starting at byte `offset` (rows of `row_bytes`) that the byte blocks
    `blocks` overlap, ascending."""
    last = -1
    for index in sorted(blocks):
        first_byte, end_byte = index * block, (index + 1) * block
        first = max(0, (first_byte - offset) // row_bytes, last + 1)
        end = min(rows, -(-(end_byte - offset) // row_bytes))
        yield from range(first, end)
        last = max(last, end - 1)
