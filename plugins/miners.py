"""The built-in triplet miners: `dict` (the seed's dictionary-based selection), `batch-hard`, `semi-hard`.

Each returns (anchor, positive, negative) index tensors. Anchors are batch rows; positives and negatives
are candidates: the batch rows followed by the reference rows (the `dict` miner's companions), never the
anchor itself. Distances are squared Euclidean, as in FaceNet. A row whose identity has no other image
among the candidates is never an anchor, so identities with a single image serve only as negatives.
Mining runs without autograd: it chooses indices, the loss differentiates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from facerec.hookspecs import Register, hookimpl
from facerec.parts import Triplets

NEGATIVE_CHOICES = ("random", "semi-hard")


@dataclass(frozen=True)
class Candidates:
    """Anchors against candidates: squared distances and which candidates are positives and negatives."""

    distances: torch.Tensor  # (anchors, candidates)
    positive: torch.Tensor  # bool (anchors, candidates): same label, not the anchor itself
    negative: torch.Tensor  # bool (anchors, candidates): another label

    @classmethod
    def of(
        cls,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Candidates:
        """The batch rows as anchors against the batch rows followed by the reference rows, detached
        (mining picks rows, it never learns).
        """
        anchors = embeddings.detach()
        rows, row_labels = anchors, labels
        if ref_embeddings is not None:
            rows, row_labels = torch.cat([anchors, ref_embeddings.detach()]), torch.cat([labels, ref_labels])
        same = labels[:, None] == row_labels[None, :]
        itself = torch.zeros_like(same)
        itself[:, : len(anchors)] = torch.eye(len(anchors), dtype=torch.bool, device=same.device)
        return cls(squared_distances(anchors, rows), same & ~itself, ~same)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for every pair, never below zero."""
    return ((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]).clamp_min(0)


def empty_triplets(device: torch.device) -> Triplets:
    empty = torch.empty(0, dtype=torch.long, device=device)
    return empty, empty, empty


def random_choice(allowed: torch.Tensor) -> torch.Tensor:
    """For each row of a boolean matrix, the column of one True entry drawn uniformly (torch's RNG)."""
    scores = torch.rand(allowed.shape).to(allowed.device)
    return scores.masked_fill(~allowed, -1.0).argmax(1)


def in_turn(allowed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each row of a boolean matrix, one True column: the k-th (cyclically) for the k-th row of a label."""
    earlier_same = torch.tril(labels[:, None] == labels[None, :], diagonal=-1).sum(1)
    turn = earlier_same % allowed.sum(1)
    rank = allowed.cumsum(1) - 1
    return (allowed & (rank == turn[:, None])).int().argmax(1)


class BatchHardMiner:
    """Batch-hard mining (Hermans et al. 2017): each anchor with its farthest positive and nearest negative."""

    @torch.no_grad()
    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Triplets:
        found = Candidates.of(embeddings, labels, ref_embeddings, ref_labels)
        anchors = (found.positive.any(1) & found.negative.any(1)).nonzero().flatten()
        distances = found.distances[anchors]
        positives = distances.masked_fill(~found.positive[anchors], -1.0).argmax(1)
        negatives = distances.masked_fill(~found.negative[anchors], float("inf")).argmin(1)
        return anchors, positives, negatives


class SemiHardMiner:
    """FaceNet's online rule: every anchor-positive pair with every negative farther than the positive
    but within the margin, d(a, p) < d(a, n) < d(a, p) + margin.
    """

    def __init__(self, margin: float = 0.2):
        if margin <= 0:
            raise ValueError(f"margin must be above 0, got {margin}")
        self.margin = float(margin)

    @torch.no_grad()
    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Triplets:
        found = Candidates.of(embeddings, labels, ref_embeddings, ref_labels)
        anchor_positive = found.distances[:, :, None]
        anchor_negative = found.distances[:, None, :]
        semi_hard = (
            found.positive[:, :, None]
            & found.negative[:, None, :]
            & (anchor_negative > anchor_positive)
            & (anchor_negative < anchor_positive + self.margin)
        )
        anchors, positives, negatives = semi_hard.nonzero(as_tuple=True)
        return anchors, positives, negatives


class DictionaryMiner:
    """The seed's selection: for each anchor, a positive and a negative drawn from the whole dataset.

    `companions` draws, for every batch row whose identity has another image, one other image of that
    identity and one image of another identity (another identity at random, then one of its images),
    positives first, in batch order. The call gives the k-th anchor of an identity the k-th companion of
    that identity (so, after `companions`, the positive drawn for it), and a negative among the companions
    of other identities: at random (`negatives="random"`, the seed's choice) or the nearest one farther
    than the positive (`negatives="semi-hard"`; when every negative is nearer than the positive, the
    farthest). Called without companions, it chooses among the batch rows the same way.
    """

    def __init__(self, negatives: str = "random"):
        if negatives not in NEGATIVE_CHOICES:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVE_CHOICES)}, got '{negatives}'")
        self.negatives = negatives

    def companions(
        self, batch: torch.Tensor, labels: torch.Tensor, index: Mapping[int, torch.Tensor]
    ) -> torch.Tensor:
        """Dataset indices to embed with the batch: the positives drawn for it, then the negatives."""
        identities = torch.tensor(sorted(index))
        positives, negatives = [], []
        for image, label in zip(batch.tolist(), labels.tolist(), strict=True):
            others = index[label][index[label] != image]
            if len(others) == 0:
                continue
            positives.append(others[torch.randint(len(others), ())])
            other_identities = identities[identities != label]
            identity = int(other_identities[torch.randint(len(other_identities), ())])
            negatives.append(index[identity][torch.randint(len(index[identity]), ())])
        return torch.stack(positives + negatives) if positives else torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Triplets:
        found = Candidates.of(embeddings, labels, ref_embeddings, ref_labels)
        drawn = torch.ones(found.distances.shape[1], dtype=torch.bool, device=embeddings.device)
        if ref_embeddings is not None:
            drawn[: len(embeddings)] = False  # choose among the companions only, as the seed does
        positive, negative = found.positive & drawn, found.negative & drawn
        anchors = (positive.any(1) & negative.any(1)).nonzero().flatten()
        if len(anchors) == 0:
            return empty_triplets(embeddings.device)
        positives = in_turn(positive[anchors], labels[anchors])
        if self.negatives == "random":
            return anchors, positives, random_choice(negative[anchors])
        distances = found.distances[anchors]
        anchor_positive = distances.gather(1, positives[:, None])
        negative = negative[anchors]
        farther = negative & (distances > anchor_positive)
        nearest_farther = distances.masked_fill(~farther, float("inf")).argmin(1)
        farthest = distances.masked_fill(~negative, -1.0).argmax(1)
        return anchors, positives, torch.where(farther.any(1), nearest_farther, farthest)


@hookimpl
def register_miners(register: Register) -> None:
    register("dict", DictionaryMiner)
    register("batch-hard", BatchHardMiner)
    register("semi-hard", SemiHardMiner)
