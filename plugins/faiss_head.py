"""The `faiss` head: the enrolled faces nearest to a query, by Euclidean distance between unit vectors.

Small galleries are searched exactly (a flat index: every enrolled vector is compared). Past
`EXACT_UP_TO` vectors an approximate index keeps a query under a millisecond. The default, `hnsw`, walks
an HNSW graph built on the vectors reduced by PCA to 128 dimensions (face embeddings have an intrinsic
dimension in the teens, so little is lost) and re-ranks the candidates it finds by their exact
512-dimensional distances; `ivf` (k-means lists) builds much faster but finds the true nearest face
less often on face-like data. How often each finds it (recall@1) is measured by
benchmarks/bench_search.py. On unit vectors the Euclidean ranking is the inner-product ranking.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

from facerec import hookimpl
from facerec.errors import UsageError

INDEX_FILE = "faiss.index"
CODES_FILE = "codes.npy"
IDENTITIES_FILE = "identities.json"
INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
EXACT_UP_TO = 50_000  # a flat search of 50k x 512 takes a few ms a query; past that, go approximate
PCA_DIMENSIONS = 128  # what the HNSW graph is walked in; candidates are re-ranked in full
RERANKED = 4  # the graph proposes RERANKED x k candidates for the exact re-ranking
PCA_SAMPLE = 65_536
IVF_MIN_VECTORS = 2 * 39  # FAISS wants 39 training points a list, and a list of one is no index
PCA_MIN_VECTORS = 1_000  # fewer cannot estimate 128 components; a graph on them is cheap at full size


class FaissHead:
    """Nearest-neighbour identification over a FAISS index of the gallery's unit vectors.

    `index` picks the structure (`auto`: flat up to EXACT_UP_TO vectors, HNSW past it). `hnsw_m`,
    `ef_construction` and `ef_search` tune HNSW (the defaults reach recall@1 >= 0.99 at under a
    millisecond a query on a million face-like vectors); `nprobe` tunes IVF (sqrt(N) lists).
    """

    default_threshold = None  # a distance between embeddings: the weights' own (the gallery's provenance)

    def __init__(
        self,
        index: str = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        nprobe: int = 16,
    ) -> None:
        if index not in INDEX_KINDS:
            raise UsageError(f"head 'faiss': index must be one of {', '.join(INDEX_KINDS)}, not '{index}'")
        self.options = {
            "index": index,
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "nprobe": nprobe,
        }
        self.index: faiss.Index | None = None
        self.codes = np.zeros(0, dtype=np.int64)
        self.identities: list[str] = []

    def fit(self, vectors: torch.Tensor, labels: Sequence[str]) -> None:
        self.identities, self.codes = [], np.zeros(0, dtype=np.int64)
        self._label(labels)
        self.index = self._build(_float32(vectors))

    def add(self, vectors: torch.Tensor, labels: Sequence[str]) -> None:
        """Extend the fitted index with more faces, without rebuilding it (an HNSW graph takes minutes
        at a million). The structure stays what it was when fitted."""
        self._label(labels)
        self.index.add(_float32(vectors))

    def _label(self, labels: Sequence[str]) -> None:
        """Append the codes of `labels`, numbering identities in order of first appearance."""
        position = {identity: i for i, identity in enumerate(self.identities)}
        for label in labels:
            if label not in position:
                position[label] = len(self.identities)
                self.identities.append(label)
        codes = np.fromiter((position[label] for label in labels), dtype=np.int64, count=len(labels))
        self.codes = np.concatenate([self.codes, codes])

    def _build(self, matrix: np.ndarray) -> faiss.Index:
        count, dim = matrix.shape
        kind = self.options["index"]
        if kind == "auto":
            kind = "flat" if count <= EXACT_UP_TO else "hnsw"
        if kind == "ivf" and count < IVF_MIN_VECTORS:
            kind = "flat"  # too few to cluster; an exact search of them is as fast
        if kind == "ivf":
            lists = max(2, min(int(math.sqrt(count)), count // 39))
            index, sample = faiss.index_factory(dim, f"IVF{lists},Flat"), 64 * lists
        elif kind == "hnsw":
            reduce = f"PCA{PCA_DIMENSIONS}," if dim > PCA_DIMENSIONS and count >= PCA_MIN_VECTORS else ""
            rerank = ",Refine(Flat)" if reduce else ""
            index, sample = (
                faiss.index_factory(dim, f"{reduce}HNSW{self.options['hnsw_m']}{rerank}"),
                PCA_SAMPLE,
            )
            _part(index, faiss.IndexHNSW).hnsw.efConstruction = self.options["ef_construction"]
        else:
            index, sample = faiss.IndexFlatL2(dim), 0
        if not index.is_trained:
            index.train(_training_sample(matrix, sample))
        index.add(matrix)
        self._tune(index)
        return index

    def _tune(self, index: faiss.Index) -> None:
        """Search-time settings, which FAISS does not keep in the index file."""
        if hnsw := _part(index, faiss.IndexHNSW):
            hnsw.hnsw.efSearch = self.options["ef_search"]
        if ivf := _part(index, faiss.IndexIVF):
            ivf.nprobe = self.options["nprobe"]
        if refine := _part(index, faiss.IndexRefine):
            refine.k_factor = RERANKED

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        matrix = _float32(queries)
        if self.index is None or self.index.ntotal == 0 or k < 1:
            return [[] for _ in range(len(matrix))]
        # Several enrolled vectors may share an identity: ask for more neighbours until k distinct show up.
        wanted = min(self.index.ntotal, 4 * k)
        results: list[list[tuple[str, float]] | None] = [None] * len(matrix)
        pending = np.arange(len(matrix))
        while len(pending):
            distances, ids = self._neighbours(matrix[pending], wanted)
            unfinished = []
            for row, query in enumerate(pending):
                found = self._distinct(distances[row], ids[row], k)
                if len(found) < k and wanted < self.index.ntotal:
                    unfinished.append(query)
                else:
                    results[query] = found
            pending = np.asarray(unfinished, dtype=np.int64)
            wanted = min(self.index.ntotal, 4 * wanted)
        return results

    def _neighbours(self, matrix: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        hnsw = _part(self.index, faiss.IndexHNSW)
        if hnsw is not None and hnsw.hnsw.efSearch < RERANKED * wanted:  # the graph must hold what is asked
            hnsw.hnsw.efSearch = RERANKED * wanted
        with _threads(min(len(matrix), faiss.omp_get_max_threads())):
            squared, ids = self.index.search(matrix, wanted)
        return np.sqrt(np.maximum(squared, 0)), ids

    def _distinct(self, distances: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The first k distinct identities among neighbours sorted nearest first, with their distances."""
        found: dict[str, float] = {}
        for distance, vector_id in zip(distances, ids, strict=True):
            if vector_id < 0:  # FAISS pads with -1 when it finds fewer neighbours than asked
                break
            identity = self.identities[self.codes[vector_id]]
            if identity not in found:
                found[identity] = float(distance)
                if len(found) == k:
                    break
        return list(found.items())

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.save(folder / CODES_FILE, self.codes)
        (folder / IDENTITIES_FILE).write_text(json.dumps(self.identities, ensure_ascii=False), "utf-8")

    def load(self, folder: Path) -> None:
        self.index = faiss.read_index(str(folder / INDEX_FILE))
        self._tune(self.index)
        self.codes = np.load(folder / CODES_FILE, allow_pickle=False)
        self.identities = json.loads((folder / IDENTITIES_FILE).read_text("utf-8"))


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """FAISS splits a search by query; for fewer queries than threads, the idle ones only add waiting
    (measured: a single query runs 2x faster on one thread than on two, with a far shorter tail)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(count, 1))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _part(index: faiss.Index, kind: type) -> faiss.Index | None:
    """The index of class `kind` inside a composite one (PCA, re-ranking wrappers), or None."""
    while index is not None:
        index = faiss.downcast_index(index)
        if isinstance(index, kind):
            return index
        index = getattr(index, "base_index", None) or getattr(index, "index", None)
    return None


def _float32(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _training_sample(matrix: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` rows (64 a list for k-means, 64k for PCA): more slows training, gains little."""
    if len(matrix) <= limit:
        return matrix
    rows = np.random.default_rng(0).choice(len(matrix), limit, replace=False)
    return matrix[np.sort(rows)]


@hookimpl
def register_heads(register) -> None:
    register("faiss", FaissHead)
