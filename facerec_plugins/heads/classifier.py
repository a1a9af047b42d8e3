"""The `classifier` head: a softmax over the enrolled identities, trained on the gallery's embeddings.

This is the seed's "classification module" done on frozen embeddings: a linear layer on standardized
vectors, trained with cross-entropy. It answers with a probability per identity; its distance is
1 - probability, so identify's `--threshold T` accepts the top identity when its probability is at least
1 - T (default 0.5: the classifier must be more sure of this identity than of all others together).
Unlike the `faiss` head it cannot say "nobody I know" by itself: a stranger is still spread over known
identities, so keep a threshold.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.plugin import FacerecError, UsageError, hookimpl

ARRAYS = ("weight", "bias", "mean", "scale")
SMALL_WORK = 50_000_000  # vectors x dimensions x identities below which one thread trains fastest
IDENTITIES_FILE = "identities.json"


class ClassifierHead:
    """Softmax regression over identities; `epochs` passes of Adam over the gallery, seeded.

    Label smoothing keeps probabilities off 0 and 1, so the runner-up candidates still say something;
    weight decay keeps the layer close to "nearest class mean", which generalizes from few photos.
    """

    default_threshold = 0.5

    def __init__(
        self,
        epochs: int = 200,
        lr: float = 0.05,
        weight_decay: float = 1e-2,
        label_smoothing: float = 0.1,
        batch_size: int = 4096,
        seed: int = 0,
    ) -> None:
        _check("epochs", epochs, lambda v: isinstance(v, int) and v >= 1, "a whole number from 1")
        _check("batch_size", batch_size, lambda v: isinstance(v, int) and v >= 1, "a whole number from 1")
        _check("seed", seed, lambda v: isinstance(v, int), "a whole number")
        _check("lr", lr, lambda v: 0 < v < math.inf, "a finite number above 0")
        _check("weight_decay", weight_decay, lambda v: 0 <= v < math.inf, "a finite number, at least 0")
        _check("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "a number from 0 to below 1")
        self.options = {
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "label_smoothing": label_smoothing,
            "batch_size": batch_size,
            "seed": seed,
        }
        self.identities: list[str] = []
        self.arrays: dict[str, torch.Tensor] = {}

    def fit(self, vectors: torch.Tensor, labels: Sequence[str]) -> None:
        self.fit_epochs(vectors, labels)

    def fit_epochs(
        self,
        vectors: torch.Tensor,
        labels: Sequence[str],
        state: Mapping[str, Any] | None = None,
        on_epoch: Callable[[int, float, dict[str, Any]], None] | None = None,
    ) -> None:
        """`fit`, resumable (facerec.training.classifier.ResumableHead): it continues after the epoch that
        `state` records and hands `on_epoch` each epoch, its mean loss and the state after it.
        """
        self.identities = sorted(set(labels))
        if len(self.identities) < 2:
            raise FacerecError("the classifier head needs at least two identities; use --head faiss")
        position = {identity: i for i, identity in enumerate(self.identities)}
        targets = torch.tensor([position[label] for label in labels])
        vectors = vectors.float()
        mean = vectors.mean(0)
        # One scale for all dimensions keeps the embedding space's geometry; it matters when a network
        # (an untrained or seeded one, say) packs every face into a small cap of the sphere.
        scale = (vectors - mean).pow(2).mean().sqrt().clamp_min(1e-6)
        weight, bias = self._train((vectors - mean) / scale, targets, state, on_epoch)
        self.arrays = {"weight": weight, "bias": bias, "mean": mean, "scale": scale}

    def _train(
        self, inputs: torch.Tensor, targets: torch.Tensor, state, on_epoch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam on the closed-form gradient of smoothed cross-entropy (a convex problem: starts at zero).

        Written out rather than through autograd and torch.optim: the first optimizer step of a process
        imports torch's compiler stack, seconds that a small gallery does not need.
        """
        count, classes, smoothing = len(inputs), len(self.identities), self.options["label_smoothing"]
        wanted = torch.full((count, classes), smoothing / classes)
        wanted[torch.arange(count), targets] += 1 - smoothing
        params = [torch.zeros(classes, inputs.shape[1]), torch.zeros(classes)]
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        step, first_epoch = 0, 1
        if state is not None:
            params = [state["weight"].clone(), state["bias"].clone()]
            moments = [(m.clone(), v.clone()) for m, v in zip(state["first"], state["second"], strict=True)]
            step, first_epoch = state["step"], state["epoch"] + 1
        with _threads(1 if inputs.numel() * classes < SMALL_WORK else None):
            for epoch in range(first_epoch, self.options["epochs"] + 1):
                # one order per epoch, so a resumed fit shuffles as an uninterrupted one
                shuffle = torch.Generator().manual_seed(self.options["seed"] * 1_000_003 + epoch)
                loss = 0.0
                for rows in torch.randperm(count, generator=shuffle).split(self.options["batch_size"]):
                    weight, bias = params
                    logits = inputs[rows] @ weight.T + bias
                    error = (torch.softmax(logits, dim=1) - wanted[rows]) / len(rows)
                    grads = [error.T @ inputs[rows] + self.options["weight_decay"] * weight, error.sum(0)]
                    loss -= float((wanted[rows] * torch.log_softmax(logits, dim=1)).sum())
                    step += 1
                    for param, grad, (first, second) in zip(params, grads, moments, strict=True):
                        _adam(param, grad, first, second, step, self.options["lr"])
                if on_epoch is not None:
                    on_epoch(
                        epoch,
                        loss / count,
                        {
                            "epoch": epoch,
                            "step": step,
                            "weight": params[0].clone(),
                            "bias": params[1].clone(),
                            "first": [m.clone() for m, _ in moments],
                            "second": [v.clone() for _, v in moments],
                        },
                    )
        return params[0], params[1]

    def probabilities(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, identities) softmax probabilities, columns in `self.identities` order."""
        a = self.arrays
        inputs = (queries.float() - a["mean"]) / a["scale"]
        return torch.softmax(inputs @ a["weight"].T + a["bias"], dim=1)

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        if not self.identities or k < 1:
            return [[] for _ in range(len(queries))]
        with torch.no_grad():
            top = self.probabilities(queries).topk(min(k, len(self.identities)), dim=1)
        return [
            [(self.identities[i], 1.0 - p) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
            for row_p, row_i in zip(top.values, top.indices, strict=True)
        ]

    def save(self, folder: Path) -> None:
        for name in ARRAYS:
            np.save(folder / f"{name}.npy", self.arrays[name].numpy(), allow_pickle=False)
        (folder / IDENTITIES_FILE).write_text(json.dumps(self.identities, ensure_ascii=False), "utf-8")

    def load(self, folder: Path) -> None:
        self.arrays = {
            name: torch.from_numpy(np.load(folder / f"{name}.npy", allow_pickle=False)) for name in ARRAYS
        }
        self.identities = json.loads((folder / IDENTITIES_FILE).read_text("utf-8"))


def _adam(param, grad, first, second, step: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam update of `param` in place (Kingma & Ba, 2015), as torch.optim.Adam does it."""
    first.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
    second.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
    corrected = (second / (1 - betas[1] ** step)).sqrt_().add_(eps)
    param.addcdiv_(first, corrected, value=-lr / (1 - betas[0] ** step))


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run on `count` threads (None: as configured). A small gallery trains in a fraction of a second on
    one thread, while thread hand-offs on its tiny matrices cost up to 100x that on a busy machine."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@hookimpl
def register_heads(register) -> None:
    register("classifier", ClassifierHead)


def _check(name: str, value: object, valid: Callable[[float], bool], kind: str) -> None:
    """An option from the command line (JSON): a number that `valid` accepts, else one line naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not valid(value):
        raise UsageError(f"head 'classifier': -H {name} must be {kind}, got {value!r}")
