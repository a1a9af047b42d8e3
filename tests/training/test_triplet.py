"""The `triplet` loss: FaceNet's formula on hand-made unit embeddings, its active fraction, its gradient."""

from __future__ import annotations

import pytest
import torch

from facerec.contract.parts import Loss, LossResult
from facerec.contract.registry import registry
from facerec.errors import UsageError
from facerec_plugins.training.triplet import TripletLoss

# Rows: 0 anchor (1, 0); 1 positive (0.6, 0.8); 2 negative (0, 1); 3 negative (-1, 0).
EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 2])


def triplets(*rows: tuple[int, int, int]):
    return tuple(torch.tensor(column) for column in zip(*rows, strict=True))


def test_registered_and_fits_the_protocol():
    assert isinstance(registry().create("loss", "triplet"), Loss)
    assert registry().create("loss", "triplet", margin=0.5).margin == 0.5


def test_value_is_the_mean_hinge_on_squared_distances():
    # d(0, 1) = 0.4^2 + 0.8^2 = 0.8; d(0, 2) = 2; d(0, 3) = 4.
    result = TripletLoss(margin=1.5)(EMBEDDINGS, LABELS, triplets((0, 1, 2), (0, 1, 3)))
    assert isinstance(result, LossResult)
    expected = (max(0.8 - 2 + 1.5, 0) + max(0.8 - 4 + 1.5, 0)) / 2
    assert result.loss.item() == pytest.approx(expected, abs=1e-6)
    assert result.stats["active"].item() == pytest.approx(0.5)  # only (0, 1, 2) is within the margin
    assert result.stats["triplets"].item() == 2


def test_default_margin_is_facenets_alpha():
    assert TripletLoss().margin == 0.2
    result = TripletLoss()(EMBEDDINGS, LABELS, triplets((0, 1, 2)))
    assert result.loss.item() == 0.0 and result.stats["active"].item() == 0.0


def test_gradient_pulls_the_positive_in_and_pushes_the_negative_out():
    embeddings = EMBEDDINGS.clone().requires_grad_()
    TripletLoss(margin=1.5)(embeddings, LABELS, triplets((0, 1, 2))).loss.backward()
    step = -embeddings.grad  # the direction gradient descent moves each row
    assert torch.dot(step[1], EMBEDDINGS[0] - EMBEDDINGS[1]) > 0  # positive towards the anchor
    assert torch.dot(step[2], EMBEDDINGS[2] - EMBEDDINGS[0]) > 0  # negative away from it
    assert embeddings.grad[3].abs().sum() == 0  # not in any triplet


def test_no_triplets_give_zero_that_still_backpropagates():
    embeddings = EMBEDDINGS.clone().requires_grad_()
    empty = torch.empty(0, dtype=torch.long)
    result = TripletLoss()(embeddings, LABELS, (empty, empty, empty))
    result.loss.backward()
    assert result.loss.item() == 0.0 and result.stats["triplets"].item() == 0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_a_negative_or_non_numeric_margin_is_a_usage_error():
    with pytest.raises(UsageError, match=r"triplet loss: margin must be a number at least 0, got -0\.1"):
        TripletLoss(margin=-0.1)
    with pytest.raises(UsageError, match="got 'wide'"):
        TripletLoss(margin="wide")  # -L margin=wide
