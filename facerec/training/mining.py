"""A base class for triplet miners, as pytorch-metric-learning's BaseMiner: what every miner repeats,
around the one method in which miners differ.

`BaseMiner.__call__` is the facerec.contract.parts.Miner protocol. It checks the inputs, turns autograd off
(mining picks rows, the loss differentiates), builds the `Candidates` (the batch rows as anchors against
the batch rows followed by the reference rows, with squared distances and which candidates are
positives and negatives), answers no triplets when no anchor has both a positive and a negative, and
otherwise calls `mine(candidates)` and checks what it returns: three 1-D int64 tensors of one length,
anchors among the batch rows, each positive of the anchor's identity and not the anchor itself, each
negative of another identity. Distances are squared Euclidean, as in FaceNet.

Subclassing is a convenience, not a requirement: the engine only calls a miner, so any callable that
keeps the Miner protocol works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from facerec.contract.parts import Triplets
from facerec.errors import FacerecError


@dataclass(frozen=True)
class Candidates:
    """Anchors (the batch rows) against candidates (the batch rows, then the reference rows)."""

    distances: torch.Tensor  # (anchors, candidates), squared Euclidean
    positive: torch.Tensor  # bool (anchors, candidates): same label, not the anchor itself
    negative: torch.Tensor  # bool (anchors, candidates): another label
    labels: torch.Tensor  # the anchors' labels

    @classmethod
    def of(
        cls,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Candidates:
        """The batch rows as anchors against the batch rows followed by the reference rows, detached."""
        anchors = embeddings.detach()
        rows, row_labels = anchors, labels
        if ref_embeddings is not None:
            rows, row_labels = torch.cat([anchors, ref_embeddings.detach()]), torch.cat([labels, ref_labels])
        same = labels[:, None] == row_labels[None, :]
        itself = torch.zeros_like(same)
        itself[:, : len(anchors)] = torch.eye(len(anchors), dtype=torch.bool, device=same.device)
        return cls(squared_distances(anchors, rows), same & ~itself, ~same, labels)

    def among(self, allowed: torch.Tensor) -> Candidates:
        """Only the candidates where the boolean vector `allowed` is True may be chosen."""
        return replace(self, positive=self.positive & allowed, negative=self.negative & allowed)

    @property
    def anchors(self) -> torch.Tensor:
        """The rows that have at least one positive and one negative candidate: the possible anchors."""
        return (self.positive.any(1) & self.negative.any(1)).nonzero().flatten()


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for every pair, never below zero."""
    return ((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]).clamp_min(0)


def empty_triplets(device: torch.device) -> Triplets:
    empty = torch.empty(0, dtype=torch.long, device=device)
    return empty, empty, empty


class BaseMiner:
    """Subclasses implement `mine`, and may narrow the candidates by overriding `candidates`."""

    @torch.no_grad()
    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Triplets:
        check_inputs(embeddings, labels, ref_embeddings, ref_labels)
        found = self.candidates(embeddings, labels, ref_embeddings, ref_labels)
        if len(found.anchors) == 0:
            return empty_triplets(embeddings.device)
        triplets = self.mine(found)
        check_triplets(type(self).__name__, triplets, found)
        return triplets

    def candidates(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> Candidates:
        """What this miner chooses from: every batch and reference row."""
        return Candidates.of(embeddings, labels, ref_embeddings, ref_labels)

    def mine(self, found: Candidates) -> Triplets:
        """(anchor, positive, negative) rows of `found`'s distance matrix (anchor rows, candidate
        columns); called only when some anchor has a positive and a negative."""
        raise NotImplementedError


def check_inputs(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_embeddings: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
) -> None:
    """Embeddings (N, D) with N labels; reference rows (M, D) with M labels, or neither."""
    if embeddings.dim() != 2 or labels.shape != (len(embeddings),):
        raise ValueError(
            f"expected (N, D) embeddings and N labels, got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels come together")
    if ref_embeddings is not None and (
        ref_embeddings.dim() != 2
        or ref_embeddings.shape[1] != embeddings.shape[1]
        or ref_labels.shape != (len(ref_embeddings),)
    ):
        raise ValueError(
            f"expected (M, {embeddings.shape[1]}) ref_embeddings and M ref_labels, got "
            f"{tuple(ref_embeddings.shape)} and {tuple(ref_labels.shape)}"
        )


def check_triplets(miner: str, triplets: Triplets, found: Candidates) -> None:
    """Refuse, in one line naming `miner`, triplets that break the Miner protocol."""
    if len(triplets) != 3 or any(
        not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.long for t in triplets
    ):
        raise FacerecError(f"miner {miner}: mine() must return three 1-D int64 tensors")
    anchors, positives, negatives = triplets
    if not len(anchors) == len(positives) == len(negatives):
        raise FacerecError(f"miner {miner}: anchors, positives and negatives differ in length")
    rows, columns = found.distances.shape
    if len(anchors) == 0:
        return
    if anchors.min() < 0 or anchors.max() >= rows:
        raise FacerecError(f"miner {miner}: an anchor is not a batch row (0 to {rows - 1})")
    for name, chosen, allowed in (
        ("positive", positives, found.positive),
        ("negative", negatives, found.negative),
    ):
        if chosen.min() < 0 or chosen.max() >= columns:
            raise FacerecError(f"miner {miner}: a {name} is not a candidate row (0 to {columns - 1})")
        if not allowed[anchors, chosen].all():
            raise FacerecError(f"miner {miner}: a {name} is not one of its anchor's {name} candidates")
