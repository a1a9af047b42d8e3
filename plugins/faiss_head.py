"""The `faiss` head: the enrolled faces nearest to a query, by inner product on unit vectors.

Small galleries are searched exactly (a flat index: every enrolled vector is compared). Past
`EXACT_UP_TO` vectors an approximate index keeps a query under a millisecond: HNSW by default, IVF on
request. Both return the same distances as the exact search for the neighbours they find; how often they
find the true nearest one (recall@1) is measured by benchmarks/bench_search.py.
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
VGGFACE2_THRESHOLD = 1.0  # see README "Choosing a threshold"


class FaissHead:
    """Nearest-neighbour identification over a FAISS index of the gallery's unit vectors.

    `index` picks the structure (`auto`: flat up to EXACT_UP_TO vectors, HNSW past it). `hnsw_m`,
    `ef_construction` and `ef_search` tune HNSW (the defaults reach recall@1 >= 0.99 on a million
    face-like vectors with a 1M build in minutes on two cores); `nprobe` tunes IVF (sqrt(N) lists).
    """

    default_threshold = VGGFACE2_THRESHOLD

    def __init__(
        self,
        index: str = "auto",
        hnsw_m: int = 24,
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
        matrix = _float32(vectors)
        self.identities = sorted(set(labels))
        position = {identity: i for i, identity in enumerate(self.identities)}
        self.codes = np.fromiter((position[label] for label in labels), dtype=np.int64, count=len(labels))
        self.index = self._build(matrix)

    def _build(self, matrix: np.ndarray) -> faiss.Index:
        count, dim = matrix.shape
        chosen = self.options["index"]
        if chosen == "auto":
            chosen = "flat" if count <= EXACT_UP_TO else "hnsw"
        if chosen == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.options["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.options["ef_construction"]
        elif chosen == "ivf":
            lists = max(1, min(int(math.sqrt(count)), count // 39))  # FAISS wants ~39 points a list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(_training_sample(matrix, lists))
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(matrix)
        self._tune(index)
        return index

    def _tune(self, index: faiss.Index) -> None:
        """Search-time settings, which FAISS does not keep in the index file."""
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = self.options["ef_search"]
        elif isinstance(index, faiss.IndexIVF):
            index.nprobe = self.options["nprobe"]

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        matrix = _float32(queries)
        if self.index is None or self.index.ntotal == 0 or k < 1:
            return [[] for _ in range(len(matrix))]
        # Several enrolled vectors may share an identity: ask for more neighbours until k distinct show up.
        wanted = min(self.index.ntotal, 4 * k)
        results: list[list[tuple[str, float]] | None] = [None] * len(matrix)
        pending = np.arange(len(matrix))
        while len(pending):
            similarities, ids = self._neighbours(matrix[pending], wanted)
            unfinished = []
            for row, query in enumerate(pending):
                found = self._distinct(similarities[row], ids[row], k)
                if len(found) < k and wanted < self.index.ntotal:
                    unfinished.append(query)
                else:
                    results[query] = found
            pending = np.asarray(unfinished, dtype=np.int64)
            wanted = min(self.index.ntotal, 4 * wanted)
        return results

    def _neighbours(self, matrix: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.index, faiss.IndexHNSW) and self.index.hnsw.efSearch < wanted:
            self.index.hnsw.efSearch = wanted
        with _threads(min(len(matrix), faiss.omp_get_max_threads())):
            return self.index.search(matrix, wanted)

    def _distinct(self, similarities: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The first k distinct identities among neighbours sorted nearest first, with their distances."""
        found: dict[str, float] = {}
        for similarity, vector_id in zip(similarities, ids, strict=True):
            if vector_id < 0:  # FAISS pads with -1 when it finds fewer neighbours than asked
                break
            identity = self.identities[self.codes[vector_id]]
            if identity not in found:
                found[identity] = unit_distance(float(similarity))
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


def unit_distance(inner_product: float) -> float:
    """Euclidean distance between two unit vectors from their inner product: sqrt(2 - 2 cos)."""
    return math.sqrt(max(2.0 - 2.0 * inner_product, 0.0))


def _float32(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _training_sample(matrix: np.ndarray, lists: int) -> np.ndarray:
    """At most 64 points a list for k-means: more slows training without much better lists."""
    limit = 64 * lists
    if len(matrix) <= limit:
        return matrix
    rows = np.random.default_rng(0).choice(len(matrix), limit, replace=False)
    return matrix[np.sort(rows)]


@hookimpl
def register_heads(register) -> None:
    register("faiss", FaissHead)
