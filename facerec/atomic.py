"""Files that are either the old version or the new one, never half-written: temp file, then rename;
and the check, before a command's work, that the folder its files go to takes them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary file beside `target`, then rename it to `target`."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(temp_name, target)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def check_writable(folder: Path) -> None:
    """Raise the OSError that writing a file into `folder` would raise, and leave nothing behind: the
    folders made for the check and its file are removed. A command that writes its results last checks
    first, so that a folder it cannot write does not cost the work done before it."""
    folder = Path(folder)
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".facerec-check-", dir=folder)
        os.close(fd)
        os.unlink(name)
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
