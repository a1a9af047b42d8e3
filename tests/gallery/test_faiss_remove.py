"""Removing faces from the `faiss` head by tombstones: searches match a head fitted on the faces left."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from facerec.errors import UsageError
from facerec_plugins.heads.classifier import ClassifierHead
from facerec_plugins.heads.faiss import ALIVE_FILE, TOMBSTONE_LIMIT, FaissHead


def face_like(identities: int, per_identity: int, queries: int, seed: int = 0):
    """Unit vectors shaped like face embeddings (identities in a low-dimensional subspace, as
    benchmarks/bench_search.py makes them): gallery vectors, their labels, fresh query photos."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((512, 16)))[0].T.astype(np.float32)
    centres = _unit(rng.standard_normal((identities, 16)).astype(np.float32) @ basis)

    def photos(owners: np.ndarray) -> np.ndarray:
        pose = 0.6 / 4 * rng.standard_normal((len(owners), 16)).astype(np.float32) @ basis
        residual = 0.33 / np.sqrt(512) * rng.standard_normal((len(owners), 512)).astype(np.float32)
        return _unit(centres[owners] + pose + residual)

    owners = np.repeat(np.arange(identities), per_identity)
    labels = [f"person {owner}" for owner in owners]
    return photos(owners), labels, photos(rng.integers(0, identities, queries))


def _unit(matrix: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(matrix / np.linalg.norm(matrix, axis=1, keepdims=True), dtype=np.float32)


def fitted(vectors: np.ndarray, labels: list[str], index: str = "flat", **options) -> FaissHead:
    head = FaissHead(index=index, **options)
    head.fit(torch.from_numpy(vectors), labels)
    return head


def drop(items: list, rows: list[int]) -> list:
    """What the head should hold after `remove(rows)`: the others, in order."""
    gone = set(rows)
    return [item for i, item in enumerate(items) if i not in gone]


def assert_same_search(head: FaissHead, reference: FaissHead, queries: np.ndarray, k: int = 5) -> None:
    found = head.search(torch.from_numpy(queries), k)
    expected = reference.search(torch.from_numpy(queries), k)
    for got, want in zip(found, expected, strict=True):
        assert [name for name, _ in got] == [name for name, _ in want]
        np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def small():
    vectors, labels, queries = face_like(60, 4, 100)
    return vectors, labels, queries


def test_flat_remove_searches_as_a_head_fitted_on_the_faces_left(small):
    vectors, labels, queries = small
    head = fitted(vectors, labels)
    rows = [3, 10, 57, 200, 239]
    assert head.remove(rows)
    kept = drop(list(range(len(vectors))), rows)
    assert_same_search(head, fitted(vectors[kept], drop(labels, rows)), queries)


def test_repeated_removes_use_the_new_numbering_and_add_appends_after_them(small):
    vectors, labels, queries = small
    head = fitted(vectors, labels)
    kept = list(range(len(vectors)))
    for rows in ([0, 5, 17], [0, 5, 17], [len(kept) - 7]):
        assert head.remove(rows)
        kept = drop(kept, rows)
    assert_same_search(head, fitted(vectors[kept], [labels[i] for i in kept]), queries)

    extra, extra_labels, _ = face_like(5, 2, 0, seed=1)
    extra_labels = ["person 0", *(f"new {label}" for label in extra_labels[1:])]  # old and new identities
    head.add(torch.from_numpy(extra), extra_labels)
    everything = np.concatenate([vectors[kept], extra])
    all_labels = [labels[i] for i in kept] + extra_labels
    assert_same_search(head, fitted(everything, all_labels), np.concatenate([queries, extra]))

    assert head.remove([len(kept) + 1, 2])  # rows counted over the old faces left, then the added ones
    rows_left = drop(list(range(len(everything))), [len(kept) + 1, 2])
    assert_same_search(head, fitted(everything[rows_left], drop(all_labels, [len(kept) + 1, 2])), queries)


def test_an_identity_with_no_face_left_is_never_returned(small):
    vectors, labels, _ = small
    head = fitted(vectors, labels)
    own = [i for i, label in enumerate(labels) if label == "person 7"]
    assert head.remove(own)
    for found in head.search(torch.from_numpy(vectors[own]), 100):
        assert "person 7" not in {name for name, _ in found}
        assert len(found) == 59  # every identity left, and the search stops there


def test_a_search_stops_at_the_identities_left():
    vectors, labels, queries = face_like(1, 8, 3)
    head = fitted(np.concatenate([vectors, vectors[:1]]), [*labels, "other"])
    assert head.remove([8])
    assert [[name for name, _ in found] for found in head.search(torch.from_numpy(queries), 3)] == [
        ["person 0"]
    ] * 3


def test_save_and_load_keep_the_tombstones(small, tmp_path):
    vectors, labels, queries = small
    head = fitted(vectors, labels)
    assert head.remove([1, 2, 3])
    head.save(tmp_path)
    assert np.load(tmp_path / ALIVE_FILE, allow_pickle=False).sum() == len(vectors) - 3
    loaded = FaissHead(index="flat")
    loaded.load(tmp_path)
    assert_same_search(loaded, head, queries)
    assert loaded.remove([1]) and head.remove([1])
    assert_same_search(loaded, head, queries)


def test_a_head_folder_saved_before_tombstones_loads_with_every_face_alive(small, tmp_path):
    vectors, labels, queries = small
    head = fitted(vectors, labels)
    head.save(tmp_path)
    (tmp_path / ALIVE_FILE).unlink()
    loaded = FaissHead(index="flat")
    loaded.load(tmp_path)
    assert_same_search(loaded, head, queries)
    assert loaded.remove([4])
    assert_same_search(
        loaded, fitted(vectors[drop(list(range(len(vectors))), [4])], drop(labels, [4])), queries
    )


def test_remove_declines_past_the_limit_and_rejects_rows_it_does_not_hold(small, tmp_path):
    vectors, labels, queries = small
    head = fitted(vectors, labels)
    limit = int(TOMBSTONE_LIMIT * len(vectors))
    assert head.remove(list(range(limit - 1)))
    before = head.search(torch.from_numpy(queries), 5)
    assert not head.remove([0, 1])
    assert head.search(torch.from_numpy(queries), 5) == before
    assert head.live_faces == len(vectors) - limit + 1
    with pytest.raises(UsageError):
        head.remove([head.live_faces])
    with pytest.raises(UsageError):
        head.remove([-1])


def test_the_classifier_head_offers_no_removal():
    assert not hasattr(ClassifierHead, "remove")


def recall_at_1(head: FaissHead, live: np.ndarray, live_labels: list[str], queries: np.ndarray) -> float:
    """The share of queries whose nearest face found is the exact nearest live face: same identity and
    same distance (which pins the face)."""
    exact = faiss.IndexFlatL2(live.shape[1])
    exact.add(live)
    squared, nearest = exact.search(queries, 1)
    found = head.search(torch.from_numpy(queries), 1)
    hits = [
        name == live_labels[i] and abs(distance - np.sqrt(max(d, 0))) < 1e-4
        for (name, distance), i, d in zip((f[0] for f in found), nearest[:, 0], squared[:, 0], strict=True)
    ]
    return float(np.mean(hits))


def test_hnsw_recall_is_unchanged_after_removing_one_percent():
    vectors, labels, queries = face_like(1000, 4, 1000)
    weak = {"hnsw_m": 8, "ef_construction": 16, "ef_search": 4}  # else recall@1 is 1 and shows nothing
    head = fitted(vectors, labels, index="hnsw", **weak)
    assert isinstance(faiss.downcast_index(head.index), faiss.IndexRefine)  # PCA + HNSW, then re-ranking
    before = recall_at_1(head, vectors, labels, queries)
    rows = sorted(np.random.default_rng(1).choice(len(vectors), len(vectors) // 100, replace=False).tolist())
    assert head.remove(rows)
    kept = drop(list(range(len(vectors))), rows)
    live, live_labels = vectors[kept], [labels[i] for i in kept]
    assert recall_at_1(head, live, live_labels, queries) >= before - 0.005
    gone = head.search(torch.from_numpy(vectors[rows]), 3)  # each removed face's nearest is itself, but dead
    assert min(distance for found in gone for _, distance in found) > 0.1
    assert recall_at_1(head, live, live_labels, vectors[rows]) >= 0.95

    before = head.search(torch.from_numpy(queries[:50]), 3)
    assert not head.remove(list(range(int(TOMBSTONE_LIMIT * len(vectors)))))
    assert head.search(torch.from_numpy(queries[:50]), 3) == before


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("hnsw_m", 0),
        ("hnsw_m", 1e9),
        ("hnsw_m", float("nan")),
        ("ef_search", -1),
        ("nprobe", 0),
        ("nprobe", True),
    ],
)
def test_bad_tuning_options_are_one_line(option, value):
    with pytest.raises(
        UsageError, match=rf"head 'faiss': -H {option} must be a whole number from \d+ to \d+"
    ):
        FaissHead(**{option: value})


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [
        ("lr", "nan", "a finite number above 0"),
        ("lr", 0, "a finite number above 0"),
        ("epochs", 0, "a whole number from 1"),
        ("batch_size", 2.5, "a whole number from 1"),
        ("label_smoothing", 1, "a number from 0 to below 1"),
        ("weight_decay", float("inf"), "a finite number, at least 0"),
    ],
)
def test_bad_classifier_options_are_one_line(option, value, kind):
    with pytest.raises(UsageError, match=rf"head 'classifier': -H {option} must be {kind}, got "):
        ClassifierHead(**{option: value})
