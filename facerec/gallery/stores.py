"""`--gallery` resolved to a store.

`--gallery` is a folder path (the `local` store) or `NAME:REST` for a registered store NAME, such as
`milvus:faces.db` or `milvus:http://host:19530#faces`; the store's factory receives REST. Text that
begins like a URI (`NAME:` or `NAME://`) must name a registered store: `mysql://host/db` with no
store for `mysql` is refused in one line rather than becoming a folder named `mysql:`. An
existing folder is always a folder, and `./name:with:colons` names a new one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from facerec import defaults
from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError

if TYPE_CHECKING:
    from facerec.contract.parts import Store

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: `C:` stays a drive
PASSWORD = re.compile(r"(//[^/:@]*:)[^/@]*@")


def without_password(location: str) -> str:
    """`location` with the password of a `scheme://user:password@host` URI replaced by `***`, for messages."""
    return PASSWORD.sub(r"\1***@", location)


def open_store(location: str | os.PathLike | Store | None = None) -> Store:
    """The store `location` names (see the module docstring); a Store passes through."""
    if location is not None and not isinstance(location, (str, os.PathLike)):
        return location
    text = os.fspath(location) if location is not None else defaults.gallery_location()
    if not text:
        raise FacerecError("--gallery: empty; give a folder or a store URI such as milvus:faces.db")
    scheme = SCHEME.match(text)
    if scheme is None or Path(text).exists():
        from facerec.gallery.local.store import LocalStore  # a plain folder: no plugin needs loading

        return LocalStore(text)
    name = scheme.group(1)
    stores = registry().parts["store"]
    if name not in stores:
        shown = without_password(text)
        raise UsageError(
            f"--gallery {shown}: no store is registered for '{name}:' (stores: "
            f"{', '.join(sorted(stores))}, or a folder path; write ./{shown} for a folder named so)"
        )
    return registry().create("store", name, location=text[len(name) + 1 :])
