"""Registers the built-in `local` store (facerec.gallery.local.store): `--gallery PATH` or `--gallery local:PATH`."""

from __future__ import annotations

from facerec.plugin import LocalStore, hookimpl


@hookimpl
def register_stores(register) -> None:
    register("local", LocalStore)
