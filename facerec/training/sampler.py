"""Which images make each batch of an epoch.

Two samplers, one per kind of miner. In-batch miners (`batch-hard`, `semi-hard`) need positives in the
batch: `IdentitySampler` fills each batch with several images of each of a few identities (P identities x
K images, FaceNet's and Hermans et al.'s scheme). The `dict` miner brings its own positives from the
dataset: `AnchorSampler` visits every image that can be an anchor once per epoch, shuffled, as the seed
did. Both derive an epoch's batches from (seed, epoch) alone, so their state is the seed.
"""

from __future__ import annotations

import math

import torch

from facerec.training.seeds import generator


def label_index(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """The seed's dictionary: each label to the dataset indices of its images, in dataset order."""
    return {int(label): (labels == label).nonzero().flatten() for label in labels.unique()}


def single_image_identities(labels: torch.Tensor) -> list[int]:
    """Labels with only one image: they can be negatives but never anchors."""
    return [label for label, images in label_index(labels).items() if len(images) == 1]


class AnchorSampler:
    """Every image whose identity has another image, once per epoch, in batches of `batch_size`."""

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int = 0):
        singles = set(single_image_identities(labels))
        self.anchors = torch.tensor([i for i, label in enumerate(labels.tolist()) if label not in singles])
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return math.ceil(len(self.anchors) / self.batch_size)

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        """The batches of dataset indices for `epoch` (from 1)."""
        order = self.anchors[
            torch.randperm(len(self.anchors), generator=generator(self.seed, "anchors", epoch))
        ]
        return list(order.split(self.batch_size))


class IdentitySampler:
    """Batches of `batch_size` images: up to `per_identity` images of each identity, identities at random.

    Identities are taken in a random order, each with a random `per_identity` of its images (all of them
    when it has fewer), until the batch is full; an identity with one image joins as a negative. An epoch
    has as many batches as it takes to show as many images as the dataset holds.
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, per_identity: int = 4, seed: int = 0):
        if per_identity < 2:
            raise ValueError(f"per_identity must be at least 2 for in-batch positives, got {per_identity}")
        self.index = label_index(labels)
        self.size = len(labels)
        self.batch_size = min(batch_size, self.size)
        self.per_identity = per_identity
        self.seed = seed

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        """The batches of dataset indices for `epoch` (from 1)."""
        draw = generator(self.seed, "identities", epoch)
        return [self._batch(draw) for _ in range(len(self))]

    def _batch(self, draw: torch.Generator) -> torch.Tensor:
        labels = list(self.index)
        chosen: list[torch.Tensor] = []
        filled = 0
        for position in torch.randperm(len(labels), generator=draw).tolist():
            images = self.index[labels[position]]
            take = min(self.per_identity, len(images), self.batch_size - filled)
            chosen.append(images[torch.randperm(len(images), generator=draw)[:take]])
            filled += take
            if filled == self.batch_size:
                break
        return torch.cat(chosen)
