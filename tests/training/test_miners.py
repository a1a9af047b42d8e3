"""The mining rules, pinned on hand-made embeddings: points on the unit circle at chosen angles.

Squared distance between unit vectors at angles a and b is 2 - 2 cos(a - b); the comments give the values.
"""

from __future__ import annotations

import math

import pytest
import torch

from facerec.contract.parts import DatasetMiner, Miner
from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.training.mining import BaseMiner, Candidates
from facerec_plugins.training.miners import BatchHardMiner, DictionaryMiner, SemiHardMiner


def circle(*degrees: float) -> torch.Tensor:
    radians = torch.tensor([math.radians(d) for d in degrees], dtype=torch.float64)
    return torch.stack([radians.cos(), radians.sin()], 1).float()


def as_set(triplets) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in triplets), strict=True))


# Rows 0, 1: identity 0; rows 2, 3: identity 1; row 4: identity 2, its only image.
# Squared distances: 0-1 0.714, 0-2 2.518, 0-3 3.970, 0-4 2.684, 1-2 0.853, 1-3 3.000, 1-4 3.879,
#                    2-3 1.155, 2-4 3.638, 3-4 1.653.
EMBEDDINGS = circle(0, 50, 105, 170, 250)
LABELS = torch.tensor([0, 0, 1, 1, 2])


def test_every_miner_is_registered_and_fits_the_protocol():
    for name, kind in (("dict", DatasetMiner), ("batch-hard", Miner), ("semi-hard", Miner)):
        assert isinstance(registry().create("miner", name), kind)
    assert not isinstance(BatchHardMiner(), DatasetMiner)


def test_batch_hard_takes_the_farthest_positive_and_nearest_negative():
    anchors, positives, negatives = BatchHardMiner()(EMBEDDINGS, LABELS)
    assert anchors.tolist() == [0, 1, 2, 3]  # row 4 has no positive: a negative only
    assert positives.tolist() == [1, 0, 3, 2]
    assert negatives.tolist() == [2, 2, 1, 4]


def test_batch_hard_with_several_positives_takes_the_farthest():
    embeddings = circle(0, 10, 40, 90)  # identity 0 at 0, 10, 40 degrees; identity 1 at 90
    triplets = BatchHardMiner()(embeddings, torch.tensor([0, 0, 0, 1]))
    assert as_set(triplets) == {(0, 2, 3), (1, 2, 3), (2, 0, 3)}


def test_semi_hard_keeps_negatives_farther_than_the_positive_but_within_the_margin():
    assert as_set(SemiHardMiner(margin=1.5)(EMBEDDINGS, LABELS)) == {(1, 0, 2), (2, 3, 0), (3, 2, 4)}
    assert as_set(SemiHardMiner()(EMBEDDINGS, LABELS)) == {(1, 0, 2)}  # margin 0.2: 0.714 < 0.853 < 0.914


def test_in_batch_miners_use_reference_rows_as_candidates_never_as_anchors():
    ref = circle(110)  # row 5, identity 0: the farthest positive of 0 and 1, the nearest negative of 2, 3
    triplets = BatchHardMiner()(EMBEDDINGS, LABELS, ref, torch.tensor([0]))
    assert as_set(triplets) == {(0, 5, 2), (1, 5, 2), (2, 3, 5), (3, 2, 5)}


def test_no_triplets_without_positives():
    for miner in (BatchHardMiner(), SemiHardMiner(), DictionaryMiner()):
        anchors, positives, negatives = miner(circle(0, 90, 180), torch.tensor([0, 1, 2]))
        assert anchors.numel() == positives.numel() == negatives.numel() == 0


# The dict miner: batch rows 0, 1 (identity 0) and 2 (identity 1), then the companions drawn for them:
# positives (rows 3, 4 of identity 0; row 5 of identity 1), negatives (6: identity 1, 7: 2, 8: 0).
BATCH = circle(0, 40, 180)
BATCH_LABELS = torch.tensor([0, 0, 1])
COMPANIONS = circle(20, 60, 200, 90, 120, 300)
COMPANION_LABELS = torch.tensor([0, 0, 1, 1, 2, 0])


def test_dict_gives_each_anchor_the_positive_drawn_for_it():
    for negatives in ("random", "semi-hard"):
        anchors, positives, _ = DictionaryMiner(negatives)(BATCH, BATCH_LABELS, COMPANIONS, COMPANION_LABELS)
        assert anchors.tolist() == [0, 1, 2]
        assert positives.tolist() == [3, 4, 5]


def test_dict_semi_hard_takes_the_nearest_negative_farther_than_the_positive():
    # anchor 0: positive 0.121, negatives 6: 2.000, 7: 3.000, 5: 3.879 -> 6
    # anchor 1: positive 0.121, negatives 6: 0.714, 7: 1.653, 5: 3.879 -> 6
    # anchor 2: positive 0.121, negatives 7: 1.000, 4 and 8: 3.000, 3: 3.879 -> 7
    _, _, negatives = DictionaryMiner("semi-hard")(BATCH, BATCH_LABELS, COMPANIONS, COMPANION_LABELS)
    assert negatives.tolist() == [6, 6, 7]


def test_dict_semi_hard_falls_back_to_the_farthest_negative():
    embeddings = circle(0, 170, 30, 200)  # every negative nearer than the positive
    _, positives, negatives = DictionaryMiner("semi-hard")(embeddings, torch.tensor([0, 0, 1, 1]))
    assert positives.tolist() == [1, 0, 3, 2]
    assert negatives.tolist() == [3, 2, 1, 0]


def test_dict_random_negatives_are_companions_of_other_identities_drawn_from_torch_rng():
    miner = DictionaryMiner("random")
    torch.manual_seed(1)
    first = miner(BATCH, BATCH_LABELS, COMPANIONS, COMPANION_LABELS)[2]
    torch.manual_seed(1)
    again = miner(BATCH, BATCH_LABELS, COMPANIONS, COMPANION_LABELS)[2]
    assert first.tolist() == again.tolist()
    labels = torch.cat([BATCH_LABELS, COMPANION_LABELS])
    assert all(n >= 3 and labels[n] != BATCH_LABELS[a] for a, n in enumerate(first.tolist()))
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        seen.add(miner(BATCH, BATCH_LABELS, COMPANIONS, COMPANION_LABELS)[2][0].item())
    assert seen == {5, 6, 7}  # anchor 0 (identity 0) draws among every companion of another identity


def test_dict_companions_draw_a_positive_and_a_negative_per_anchor_from_the_dictionary():
    dataset_labels = torch.tensor([0, 0, 0, 1, 1, 2])  # identity 2 has a single image
    index = {label: (dataset_labels == label).nonzero().flatten() for label in (0, 1, 2)}
    batch = torch.tensor([0, 5, 3, 1])
    torch.manual_seed(0)
    drawn = DictionaryMiner().companions(batch, dataset_labels[batch], index)
    anchors = batch[[0, 2, 3]]  # image 5 is identity 2's only one: no anchor, no companions
    positives, negatives = drawn[:3], drawn[3:]
    assert len(drawn) == 6
    assert (dataset_labels[positives] == dataset_labels[anchors]).all()
    assert (positives != anchors).all()
    assert (dataset_labels[negatives] != dataset_labels[anchors]).all()
    identity_two_drawn = set()
    for seed in range(30):
        torch.manual_seed(seed)
        identity_two_drawn.update(DictionaryMiner().companions(batch, dataset_labels[batch], index).tolist())
    assert 5 in identity_two_drawn  # the single image still serves as a negative


def test_miner_options_are_usage_errors():
    with pytest.raises(
        UsageError, match="dict miner: negatives must be one of random, semi-hard, got 'hardest'"
    ):
        DictionaryMiner("hardest")
    with pytest.raises(UsageError, match="semi-hard miner: margin must be a number above 0, got 0"):
        SemiHardMiner(margin=0)


class Careless(BaseMiner):
    """A miner that returns what it is given to return, to see the base class check it."""

    def __init__(self, triplets):
        self.triplets = triplets
        self.autograd: bool | None = None  # whether autograd was on inside mine()

    def mine(self, found: Candidates):
        self.autograd = torch.is_grad_enabled()
        return self.triplets


def rows(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


@pytest.mark.parametrize(
    ("triplets", "problem"),
    [
        ((rows(0), rows(1)), r"mine\(\) must return three 1-D int64 tensors"),
        ((rows(0), rows(1), torch.tensor([2.0])), r"mine\(\) must return three 1-D int64 tensors"),
        ((rows(0, 1), rows(1), rows(2)), "anchors, positives and negatives differ in length"),
        ((rows(5), rows(1), rows(2)), r"an anchor is not a batch row \(0 to 4\)"),
        ((rows(0), rows(0), rows(2)), "a positive is not one of its anchor's positive candidates"),
        ((rows(0), rows(2), rows(2)), "a positive is not one of its anchor's positive candidates"),
        ((rows(0), rows(1), rows(1)), "a negative is not one of its anchor's negative candidates"),
        ((rows(0), rows(1), rows(7)), r"a negative is not a candidate row \(0 to 4\)"),
    ],
)
def test_the_base_class_refuses_triplets_that_break_the_protocol(triplets, problem):
    with pytest.raises(FacerecError, match=f"^miner Careless: {problem}"):
        Careless(triplets)(EMBEDDINGS, LABELS)


def test_the_base_class_mines_without_autograd_and_answers_empty_batches_itself():
    miner = Careless((rows(0), rows(1), rows(2)))
    anchors, positives, negatives = miner(EMBEDDINGS.clone().requires_grad_(), LABELS)
    assert (anchors.tolist(), positives.tolist(), negatives.tolist()) == ([0], [1], [2])
    assert miner.autograd is False and torch.is_grad_enabled()
    empty = Careless((rows(0), rows(1), rows(2)))
    nothing = empty(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    assert [t.tolist() for t in nothing] == [[], [], []]
    assert empty.autograd is None  # mine() is not asked when no row can be an anchor
    with pytest.raises(ValueError, match=r"expected \(N, D\) embeddings and N labels"):
        BatchHardMiner()(EMBEDDINGS, LABELS[:3])
    with pytest.raises(ValueError, match="come together"):
        BatchHardMiner()(EMBEDDINGS, LABELS, EMBEDDINGS)
