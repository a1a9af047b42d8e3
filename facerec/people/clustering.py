"""Grouping faces into people: the neighbour graph from FAISS, and the clustering rules compared on it.

Every rule works on the same sparse graph: each face's nearest faces within the backbone's same-person
distance, found with FAISS a block of queries at a time (never an all-pairs matrix), so 100,000 faces
cluster in seconds. The rules:

- `incremental` (the default; Immich's rule, made deterministic): a face with at least `min_faces - 1`
  neighbours is a core face. Core faces in order join the person of their nearest already-assigned
  neighbour, else start a person; then every other face joins the person of its nearest assigned
  neighbour, if any; the rest stay unassigned. Faces that already have a person (from an earlier run, or
  a user's choice) are assigned before any other, so a new run only adds to what was there.
- `chinese-whispers` (dlib's `chinese_whispers_clustering`): label propagation over the graph, each face
  taking the label most of its neighbours carry, in a fixed random order, for `iterations` rounds;
  clusters smaller than `min_faces` are unassigned.
- `dbscan` (scikit-learn): density clusters of radius `distance` with `min_faces` faces in a core
  neighbourhood; noise stays unassigned.

`benchmarks/bench_cluster.py` measures them on labelled photos; the README says which won and by how much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

UNASSIGNED = -1
QUERY_BLOCK = 4096  # queries per FAISS search: bounded memory at any gallery size
NEIGHBOURS = 64  # nearest faces looked at per face (more than any person has in one neighbourhood)


@dataclass(frozen=True)
class Graph:
    """For each face, its neighbours within the distance (not itself), nearest first."""

    indices: list[np.ndarray]
    distances: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.indices)

    def matrix(self) -> sparse.csr_matrix:
        """The graph as a sparse matrix of distances (scikit-learn's `precomputed` form)."""
        rows = np.repeat(np.arange(len(self)), [len(i) for i in self.indices])
        columns = np.concatenate(self.indices) if len(self) else np.zeros(0, int)
        values = np.concatenate(self.distances) if len(self) else np.zeros(0)
        return sparse.csr_matrix((values, (rows, columns)), shape=(len(self), len(self)))


def neighbour_graph(vectors: np.ndarray, distance: float, neighbours: int = NEIGHBOURS) -> Graph:
    """Each face's nearest `neighbours` faces within Euclidean `distance` (unit vectors), from an exact
    FAISS inner-product index searched a block at a time."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    if count == 0:
        return Graph([], [])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    k = min(neighbours + 1, count)
    indices, distances = [], []
    for start in range(0, count, QUERY_BLOCK):
        similarity, found = index.search(vectors[start : start + QUERY_BLOCK], k)
        apart = np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))
        for row, (near, far) in enumerate(zip(found, apart, strict=True)):
            keep = (near >= 0) & (near != start + row) & (far <= distance)
            indices.append(near[keep].astype(np.int64))
            distances.append(far[keep].astype(np.float32))
    return Graph(indices, distances)


def incremental(graph: Graph, min_faces: int = 2, known: Sequence[int] | None = None) -> np.ndarray:
    """Immich's rule (see the module docstring). `known` gives faces' existing labels (UNASSIGNED for
    none); they are kept, and new labels continue after the largest of them."""
    labels = np.full(len(graph), UNASSIGNED, np.int64) if known is None else np.array(known, np.int64)
    following = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    core = [face for face in range(len(graph)) if len(graph.indices[face]) >= min_faces - 1]
    for face in core:
        if labels[face] != UNASSIGNED:
            continue
        nearest = _nearest_assigned(graph, labels, face)
        if nearest is None:
            labels[face], following = following, following + 1
        else:
            labels[face] = nearest
    for face in range(len(graph)):
        if labels[face] == UNASSIGNED:
            nearest = _nearest_assigned(graph, labels, face, core_only=set(core))
            if nearest is not None:
                labels[face] = nearest
    return labels


def _nearest_assigned(
    graph: Graph, labels: np.ndarray, face: int, core_only: set[int] | None = None
) -> int | None:
    for neighbour in graph.indices[face]:  # nearest first
        if labels[neighbour] != UNASSIGNED and (core_only is None or neighbour in core_only):
            return int(labels[neighbour])
    return None


def chinese_whispers(graph: Graph, min_faces: int = 2, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """dlib's label propagation (see the module docstring); unit edge weights, as face_recognition's
    clustering example uses."""
    labels = np.arange(len(graph))
    order = np.random.default_rng(seed)
    for _ in range(iterations):
        changed = False
        for face in order.permutation(len(graph)):
            near = graph.indices[face]
            if not len(near):
                continue
            values, counts = np.unique(labels[near], return_counts=True)
            best = int(values[np.argmax(counts)])
            if best != labels[face]:
                labels[face], changed = best, True
        if not changed:
            break
    return _small_unassigned(labels, min_faces)


def dbscan(graph: Graph, distance: float, min_faces: int = 2) -> np.ndarray:
    """scikit-learn's DBSCAN on the sparse graph (see the module docstring)."""
    from sklearn.cluster import DBSCAN

    if not len(graph):
        return np.zeros(0, np.int64)
    found = DBSCAN(eps=distance, min_samples=min_faces, metric="precomputed").fit(graph.matrix())
    return found.labels_.astype(np.int64)


def _small_unassigned(labels: np.ndarray, min_faces: int) -> np.ndarray:
    """Labels renumbered from 0 in order of first appearance; clusters under `min_faces` unassigned."""
    result = np.full(len(labels), UNASSIGNED, np.int64)
    values, counts = np.unique(labels, return_counts=True)
    big = {int(v) for v, c in zip(values, counts, strict=True) if c >= min_faces}
    numbering: dict[int, int] = {}
    for face, label in enumerate(labels):
        if int(label) in big:
            result[face] = numbering.setdefault(int(label), len(numbering))
    return result


RULES = ("incremental", "chinese-whispers", "dbscan")


def cluster(
    vectors: np.ndarray, distance: float, rule: str = "incremental", min_faces: int = 2, known=None
) -> np.ndarray:
    """Labels (UNASSIGNED for nobody) of `vectors` under `rule` at the same-person `distance`."""
    graph = neighbour_graph(vectors, distance)
    if rule == "incremental":
        return incremental(graph, min_faces, known)
    if rule == "chinese-whispers":
        return chinese_whispers(graph, min_faces)
    if rule == "dbscan":
        return dbscan(graph, distance, min_faces)
    raise ValueError(f"unknown clustering rule '{rule}' (available: {', '.join(RULES)})")


def pairwise_scores(labels: Sequence[int], truth: Sequence[str]) -> tuple[float, float, float]:
    """Pairwise precision, recall and F1 of `labels` (UNASSIGNED counts as a cluster of its own per face)
    against the true people."""
    labels = [f"u{i}" if label == UNASSIGNED else label for i, label in enumerate(labels)]
    same_found = same_true = both = 0
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            found, true = labels[i] == labels[j], truth[i] == truth[j]
            same_found += found
            same_true += true
            both += found and true
    precision = both / same_found if same_found else 1.0
    recall = both / same_true if same_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def bcubed_f(labels: Sequence[int], truth: Sequence[str]) -> float:
    """BCubed F-measure: per face, precision and recall of its cluster against its person, averaged."""
    labels = [f"u{i}" if label == UNASSIGNED else label for i, label in enumerate(labels)]
    precisions, recalls = [], []
    for i in range(len(labels)):
        cluster_ = [j for j in range(len(labels)) if labels[j] == labels[i]]
        person = [j for j in range(len(labels)) if truth[j] == truth[i]]
        correct = sum(truth[j] == truth[i] for j in cluster_)
        precisions.append(correct / len(cluster_))
        recalls.append(correct / len(person))
    precision, recall = float(np.mean(precisions)), float(np.mean(recalls))
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
