"""The built-in triplet miners: `dict` (the seed's dictionary-based selection), `batch-hard`, `semi-hard`.

Each returns (anchor, positive, negative) index tensors. Anchors are batch rows; positives and negatives
are candidates: the batch rows followed by the reference rows (the `dict` miner's companions), never the
anchor itself. Distances are squared Euclidean, as in FaceNet. A row whose identity has no other image
among the candidates is never an anchor, so identities with a single image serve only as negatives.
facerec.training.mining.BaseMiner does what they share: input and output checks, no autograd, the candidates.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from facerec.plugin import BaseMiner, Candidates, Register, Triplets, UsageError, hookimpl

NEGATIVE_CHOICES = ("random", "semi-hard")


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


class BatchHardMiner(BaseMiner):
    """Batch-hard mining (Hermans et al. 2017): each anchor with its farthest positive and nearest negative."""

    def mine(self, found: Candidates) -> Triplets:
        anchors = found.anchors
        distances = found.distances[anchors]
        positives = distances.masked_fill(~found.positive[anchors], -1.0).argmax(1)
        negatives = distances.masked_fill(~found.negative[anchors], float("inf")).argmin(1)
        return anchors, positives, negatives


class SemiHardMiner(BaseMiner):
    """FaceNet's online rule: every anchor-positive pair with every negative farther than the positive
    but within the margin, d(a, p) < d(a, n) < d(a, p) + margin.
    """

    def __init__(self, margin: float = 0.2):
        if not isinstance(margin, int | float) or not margin > 0:
            raise UsageError(f"semi-hard miner: margin must be a number above 0, got {margin!r}")
        self.margin = float(margin)

    def mine(self, found: Candidates) -> Triplets:
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


class DictionaryMiner(BaseMiner):
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
            raise UsageError(
                f"dict miner: negatives must be one of {', '.join(NEGATIVE_CHOICES)}, got '{negatives}'"
            )
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

    def candidates(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> Candidates:
        """The companions only, as the seed chooses; the batch rows when there are no companions."""
        found = Candidates.of(embeddings, labels, ref_embeddings, ref_labels)
        if ref_embeddings is None:
            return found
        drawn = torch.ones(found.distances.shape[1], dtype=torch.bool, device=embeddings.device)
        drawn[: len(embeddings)] = False
        return found.among(drawn)

    def mine(self, found: Candidates) -> Triplets:
        anchors = found.anchors
        positives = in_turn(found.positive[anchors], found.labels[anchors])
        negative = found.negative[anchors]
        if self.negatives == "random":
            return anchors, positives, random_choice(negative)
        distances = found.distances[anchors]
        anchor_positive = distances.gather(1, positives[:, None])
        farther = negative & (distances > anchor_positive)
        nearest_farther = distances.masked_fill(~farther, float("inf")).argmin(1)
        farthest = distances.masked_fill(~negative, -1.0).argmax(1)
        return anchors, positives, torch.where(farther.any(1), nearest_farther, farthest)


@hookimpl
def register_miners(register: Register) -> None:
    register("dict", DictionaryMiner)
    register("batch-hard", BatchHardMiner)
    register("semi-hard", SemiHardMiner)
