"""The `local` store: a gallery in a folder of immutable versions (facerec.gallery.local.folder has the format).

It is registered like any store (facerec_plugins/stores/local.py), and also built directly for a plain folder
path, so that reading a folder gallery loads no plugin (a re-index with nothing to do stays instant).

Every commit writes a whole new version. The head is carried over when it can be: a `faiss` head drops
removed faces as tombstones (`remove`) and appends new ones (`add`), so an edit of a large gallery does
not rebuild its HNSW graph; a head that cannot do either is fitted again on the new version's vectors.
A change that keeps every row and the head (a people edit, skipped images) shares the base's vectors and
head files (facerec.gallery.local.folder): nothing of them is read, copied or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facerec.gallery.local import folder
from facerec.gallery.local.folder import Contents, Snapshot
from facerec.gallery.records import Change

if TYPE_CHECKING:
    from facerec.contract.parts import Head


class LocalStore:
    """A gallery folder (`--gallery PATH` or `--gallery local:PATH`)."""

    fits_heads = True

    def __init__(self, location: str) -> None:
        self.location = location
        self.path = Path(location)

    def read(self) -> Snapshot | None:
        return folder.read(self.path)

    def current(self) -> str | None:
        return folder.current(self.path)

    def locked(self):
        return folder.locked(self.path)

    def recover(self, full: bool = False) -> tuple[Snapshot | None, str | None]:
        return folder.recover(self.path, full)

    def commit(self, base: Snapshot | None, change: Change) -> str:
        width = change.provenance.embedding_size
        same = _same_vectors_and_head(base, change)
        kept = base.entries() if base is not None and change.keep else []
        if same:
            vectors = base.vectors()  # mapped, not copied: its file is linked, not written
        else:
            old = base.vectors(change.keep) if kept else np.zeros((0, width), np.float32)
            vectors = np.concatenate([np.asarray(old, np.float32), change.added_vectors(width)])
        contents = Contents(
            provenance=change.provenance,
            head=change.head,
            head_options=change.head_options,
            entries=[kept[row] for row in change.keep] + change.added,
            vectors=vectors,
            skipped=change.skipped,
            people=change.people if change.people is not None or base is None else base.people(),
        )
        previous = base.version if base else None
        if same:
            return folder.write(self.path, contents, None, previous=previous, same_as=base.version)
        head = change.fitted_head or _carried_head(base, change) or _fitted(contents)
        return folder.write(self.path, contents, head, previous=previous)


def _same_vectors_and_head(base: Snapshot | None, change: Change) -> bool:
    """Whether the new version's vectors and head are the base's, byte for byte: every row kept in
    order, none added, the same head and options, nothing of the base damaged or set aside."""
    return (
        base is not None
        and not base.damage
        and not base.dropped
        and change.fitted_head is None
        and not change.added
        and (change.head, change.head_options) == (base.head_name, base.head_options)
        and change.keep == list(range(len(base)))
    )


def _carried_head(base: Snapshot | None, change: Change) -> Head | None:
    """The base's head brought up to date with the change, or None when it must be fitted again: no
    intact head of the same name and options, or one that cannot remove or add faces."""
    if (
        base is None
        or base.damage
        or (change.head, change.head_options) != (base.head_name, base.head_options)
    ):
        return None
    removed, added = change.removed(len(base)), change.added
    head = base.load_head()
    if removed and not (hasattr(head, "remove") and head.remove(removed)):
        return None
    if added:
        if not hasattr(head, "add"):
            return None
        import torch  # here, not above: reading a gallery needs no torch

        width = change.provenance.embedding_size
        head.add(torch.from_numpy(change.added_vectors(width)), [entry.identity for entry in added])
    return head


def _fitted(contents: Contents) -> Head:
    labels = [entry.identity for entry in contents.entries]
    return folder.fit_head(contents.head, contents.head_options, contents.vectors, labels)
