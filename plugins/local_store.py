"""Registers the built-in `local` store (facerec.local_store): `--gallery PATH` or `--gallery local:PATH`."""

from __future__ import annotations

from facerec import hookimpl
from facerec.local_store import LocalStore


@hookimpl
def register_stores(register) -> None:
    register("local", LocalStore)
