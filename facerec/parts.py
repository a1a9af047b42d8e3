"""The shapes of the parts plugins register. The engine relies on these and on nothing else.

Each kind is registered under a name with a factory: a class or any callable that takes keyword options
and returns the part. The core never imports a concrete part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from facerec.faces import Face
from facerec.weights import WeightFile


@runtime_checkable
class Backbone(Protocol):
    """A recognition network: aligned face tensors (N, 3, S, S), standardized, to unit embeddings."""

    input_size: int
    embedding_size: int
    pretrained: Mapping[str, WeightFile]

    def build(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """A trainable network (forward returns unit embeddings) loaded from `state_dict` when given.

        Raises ValueError when the state dict does not fit this network.
        """
        ...

    def for_inference(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module for inference only (it may fold batch norm, change memory layout), same outputs."""
        ...


@runtime_checkable
class Detector(Protocol):
    """Finds faces in RGB images."""

    settings: Mapping[str, Any]  # JSON-able; recorded in galleries so identify detects the same way

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each image, largest first."""
        ...


Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@runtime_checkable
class Miner(Protocol):
    """Chooses (anchor, positive, negative) index triplets from a batch of embeddings."""

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets: ...


@runtime_checkable
class Loss(Protocol):
    """A metric-learning loss over embeddings, labels and mined index tuples."""

    def __call__(
        self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets
    ) -> torch.Tensor: ...


@runtime_checkable
class Head(Protocol):
    """Maps embeddings to identities; fitted on a gallery's vectors and saved inside the gallery."""

    def fit(self, vectors: torch.Tensor, labels: Sequence[str]) -> None: ...

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """For each query, up to k (identity, distance) pairs, nearest first."""
        ...
