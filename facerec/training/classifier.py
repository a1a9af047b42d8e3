"""The seed's classification module: a head (`classifier`) trained on a gallery's frozen embeddings.

`facerec train DIR --head classifier` first enrolls DIR into the gallery as `facerec index` does (only new
or changed images go through the frozen backbone), then fits the head on the gallery's vectors epoch by
epoch into a run folder (metrics.jsonl, checkpoint.pt, loss.png; `--resume` continues), and finally
stores the fitted head as the gallery's, so `facerec identify` answers with it.

The head runs its own training loop; the run only keeps what the head hands over after each epoch. A
head takes part by implementing `ResumableHead`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.gallery.enroll import index_folder
from facerec.gallery.models import ModelRequest
from facerec.gallery.records import unchanged
from facerec.gallery.stores import open_store
from facerec.integrity import first_not_finite
from facerec.training.runfiles import RunFolder

if TYPE_CHECKING:
    from facerec.contract.parts import Store

CHECKPOINT_FORMAT = 1
EpochCallback = Callable[[int, float, dict[str, Any]], None]


@runtime_checkable
class ResumableHead(Protocol):
    """A head whose fitting can be checkpointed and resumed.

    `fit_epochs` fits as `fit` does, for `options["epochs"]` epochs in all, starting after the epoch that
    `state` records when given (a state an earlier `on_epoch` received, for the same vectors and labels).
    After each epoch it calls `on_epoch(epoch, mean loss, state)`, the state made of tensors, numbers,
    strings, lists and dicts only, so it saves and loads with `weights_only=True`.
    """

    options: Mapping[str, Any]

    def fit_epochs(
        self,
        vectors: torch.Tensor,
        labels: Sequence[str],
        state: Mapping[str, Any] | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None: ...


def train_head(
    gallery: str | Path,
    folder: Path,
    head: str,
    head_options: dict[str, Any],
    out: Path,
    resume: bool = False,
    models: dict[str, Any] | None = None,
    device: str = "auto",
    report: Callable[[str], None] = print,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Enroll `folder` into `gallery`, fit head `head` (with `head_options`) on the gallery's vectors into
    the run folder `out`, and make it the gallery's head. Returns the records of the epochs run now.
    """
    run = RunFolder(out)
    checkpoint = _checkpoint(run, resume)
    if checkpoint is not None:
        head, head_options = checkpoint["head"], _resumed_options(checkpoint["options"], head_options, run)
    fitted = registry().create("head", head, **head_options)
    if not isinstance(fitted, ResumableHead):
        raise UsageError(
            f"head '{head}' cannot be trained epoch by epoch; `facerec index --head {head}` fits it"
        )
    store = open_store(gallery)
    if not store.fits_heads:
        raise UsageError(f"--gallery {store.location}: searches by itself; train a head on a folder gallery")
    index_folder(store, folder, ModelRequest(device=device, **(models or {})), note=report)
    snapshot = store.read()
    version = snapshot.version
    try:
        vectors = torch.from_numpy(np.array(snapshot.vectors(), dtype=np.float32))
        labels = [entry.identity for entry in snapshot.entries()]
    finally:
        snapshot.close()
    enrolled = fingerprint(vectors, labels)
    if checkpoint is not None and checkpoint["enrolled"] != enrolled:
        raise FacerecError(f"{gallery}: its faces changed since the run in {out} started; start a new run")
    run.create()
    records = []

    def on_epoch(epoch: int, loss: float, state: dict[str, Any]) -> None:
        bad = first_not_finite(state)
        if not math.isfinite(loss) or bad is not None:
            cause = f"the loss is {loss}" if not math.isfinite(loss) else f"its update left {bad} not finite"
            raise run.diverged(f"epoch {epoch}", cause, epoch - 1, fitted.options.get("lr"))
        record = {"epoch": epoch, "loss": loss}
        records.append(record)
        run.add_metrics(record)
        run.save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": "head",
                "head": head,
                "options": dict(fitted.options),
                "gallery": str(gallery),
                "enrolled": enrolled,
                "epoch": epoch,
                "state": state,
            }
        )
        echo(f"epoch {epoch}/{fitted.options['epochs']}  loss {loss:.4f}")

    fitted.fit_epochs(vectors, labels, checkpoint["state"] if checkpoint else None, on_epoch)
    _store_head(store, version, head, fitted)
    return records


def fingerprint(vectors: torch.Tensor, labels: Sequence[str]) -> str:
    """A SHA-256 of what the head learns from: the vectors and their identities, in order."""
    digest = hashlib.sha256(vectors.numpy().tobytes())
    digest.update(json.dumps(list(labels), ensure_ascii=False).encode())
    return digest.hexdigest()


def _checkpoint(run: RunFolder, resume: bool) -> dict[str, Any] | None:
    if not resume:
        if run.checkpoint.exists():
            raise FacerecError(
                f"{run.path}: holds a run already; pass --resume to continue it, or another --out"
            )
        return None
    checkpoint = run.load_checkpoint()
    if checkpoint.get("format") != CHECKPOINT_FORMAT or checkpoint.get("kind") != "head":
        raise FacerecError(f"{run.checkpoint}: not a checkpoint of a head's training (train --head)")
    return checkpoint


def _resumed_options(recorded: dict[str, Any], given: dict[str, Any], run: RunFolder) -> dict[str, Any]:
    """The recorded head options with the epoch count given now; other given options must agree."""
    for name, value in given.items():
        if name != "epochs" and recorded.get(name) != value:
            raise UsageError(
                f"head option {name}={value} differs from the run's {recorded.get(name)} ({run.checkpoint}); "
                "--resume continues a run with its own settings"
            )
    return {**recorded, **given}


def _store_head(store: Store, version: str, name: str, head: Any) -> None:
    """A new gallery version: the same entries and vectors, with the fitted head."""
    with store.locked():
        snapshot = store.read()
        try:
            if snapshot.version != version:
                raise FacerecError(f"{store.location}: changed while the head was training; run again")
            change = replace(
                unchanged(snapshot), head=name, head_options=dict(head.options), fitted_head=head
            )
            store.commit(snapshot, change)
        finally:
            snapshot.close()
