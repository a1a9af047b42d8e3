"""The `triplet` loss: FaceNet's triplet loss (Schroff et al. 2015, eq. 1) on unit embeddings.

For each mined (anchor, positive, negative) it is max(0, |a - p|^2 - |a - n|^2 + margin), squared
Euclidean distances as in the paper, averaged over the triplets. Its `active` statistic is the fraction of
triplets whose loss is above zero: the ones that still teach the network something.
"""

from __future__ import annotations

import torch

from facerec.plugin import LossResult, Register, Triplets, UsageError, hookimpl


class TripletLoss:
    """FaceNet's triplet loss with margin `margin` (alpha in the paper, 0.2 there and here)."""

    def __init__(self, margin: float = 0.2):
        if not isinstance(margin, int | float) or not margin >= 0:
            raise UsageError(f"triplet loss: margin must be a number at least 0, got {margin!r}")
        self.margin = float(margin)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets) -> LossResult:
        """The mean triplet loss over `triplets` (zero, still attached to the graph, when there are none)."""
        anchors, positives, negatives = triplets
        if anchors.numel() == 0:
            zero = embeddings.sum() * 0.0
            return LossResult(zero, {"active": zero.detach(), "triplets": zero.detach()})
        anchor = embeddings[anchors]
        positive_distance = (anchor - embeddings[positives]).pow(2).sum(1)
        negative_distance = (anchor - embeddings[negatives]).pow(2).sum(1)
        losses = torch.relu(positive_distance - negative_distance + self.margin)
        stats = {
            "active": (losses > 0).float().mean().detach(),
            "triplets": torch.tensor(float(anchors.numel()), device=embeddings.device),
        }
        return LossResult(losses.mean(), stats)


@hookimpl
def register_losses(register: Register) -> None:
    register("triplet", TripletLoss)
