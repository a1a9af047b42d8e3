"""The `faiss` head: the enrolled faces nearest to a query, by Euclidean distance between unit vectors.

Small galleries are searched exactly (a flat index: every enrolled vector is compared). Past
`EXACT_UP_TO` vectors an approximate index keeps a query under a millisecond. The default, `hnsw`, walks
an HNSW graph built on the vectors reduced by PCA to 128 dimensions (face embeddings have an intrinsic
dimension in the teens, so little is lost) and re-ranks the candidates it finds by their exact
512-dimensional distances; `ivf` (k-means lists) builds much faster but finds the true nearest face
less often on face-like data. How often each finds it (recall@1) is measured by
benchmarks/bench_search.py. On unit vectors the Euclidean ranking is the inner-product ranking.

Removing faces leaves the index as it is and marks their FAISS ids dead (tombstones): rebuilding an
HNSW graph of a million vectors takes minutes, marking takes a millisecond, and the dead nodes still
serve as stepping stones in the graph. Searches skip dead ids. Past TOMBSTONE_LIMIT of the index dead,
`remove` declines and the caller fits the head again, which drops them for good.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from facerec.plugin import FacerecError, UsageError, hookimpl

if TYPE_CHECKING:
    import faiss  # imported where an index is built, read or searched: every command loads the plugins

INDEX_FILE = "faiss.index"
CODES_FILE = "codes.npy"
IDENTITIES_FILE = "identities.json"
ALIVE_FILE = "alive.npy"
INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
EXACT_UP_TO = 50_000  # a flat search of 50k x 512 takes a few ms a query; past that, go approximate
PCA_DIMENSIONS = 128  # what the HNSW graph is walked in; candidates are re-ranked in full
RERANKED = 4  # the graph proposes RERANKED x k candidates for the exact re-ranking
PCA_SAMPLE = 65_536
IVF_MIN_VECTORS = 2 * 39  # FAISS wants 39 training points a list, and a list of one is no index
PCA_MIN_VECTORS = 1_000  # fewer cannot estimate 128 components; a graph on them is cheap at full size
TOMBSTONE_LIMIT = 0.25  # past this share of dead ids, searches widen a lot and a refit pays for itself
# Whole-number tuning options and their bounds: outside them FAISS aborts the process (an HNSW graph of
# fewer than 2 links a node) or builds an index no machine holds.
TUNING_RANGES = {
    "hnsw_m": (2, 256),
    "ef_construction": (1, 4096),
    "ef_search": (1, 4096),
    "nprobe": (1, 65536),
}


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
        tuning = {
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "nprobe": nprobe,
        }
        for name, value in tuning.items():
            _check_whole(name, value, *TUNING_RANGES[name])
        self.options = {"index": index, **tuning}
        self.index: faiss.Index | None = None
        self.codes = np.zeros(0, dtype=np.int64)  # by FAISS id, dead ones included
        self.identities: list[str] = []
        self.alive = np.zeros(0, dtype=bool)  # by FAISS id; the head's rows are its live ids, in order
        self.live_faces = self.live_identities = 0

    def fit(self, vectors: torch.Tensor, labels: Sequence[str]) -> None:
        self.identities, self.codes = [], np.zeros(0, dtype=np.int64)
        self._label(labels)
        self.index = self._build(_float32(vectors))
        self._set_alive(np.ones(self.index.ntotal, dtype=bool))

    def add(self, vectors: torch.Tensor, labels: Sequence[str]) -> None:
        """Extend the fitted index with more faces, without rebuilding it (an HNSW graph takes minutes
        at a million). The structure stays what it was when fitted; the new faces are the last rows."""
        self._label(labels)
        self.index.add(_float32(vectors))
        self._set_alive(np.concatenate([self.alive, np.ones(len(labels), dtype=bool)]))

    def remove(self, rows: Sequence[int]) -> bool:
        """Forget the faces at rows `rows` (positions among the faces held now); the others close up, in
        order. Returns False, changing nothing, when the dead would pass TOMBSTONE_LIMIT of the index:
        the caller then fits the head again on the faces left."""
        positions = np.unique(np.asarray(rows, dtype=np.int64))
        if len(positions) and (positions[0] < 0 or positions[-1] >= self.live_faces):
            raise UsageError(f"head 'faiss': cannot remove rows outside 0..{self.live_faces - 1}")
        dead = len(self.alive) - self.live_faces + len(positions)
        if dead > TOMBSTONE_LIMIT * len(self.alive):
            return False
        alive = self.alive.copy()
        alive[np.flatnonzero(alive)[positions]] = False
        self._set_alive(alive)
        return True

    def _set_alive(self, alive: np.ndarray) -> None:
        """Adopt the tombstones `alive`, counting what searches can still find."""
        self.alive = alive
        self.live_faces = int(np.count_nonzero(alive))
        self.live_identities = int(np.count_nonzero(np.bincount(self.codes[alive], minlength=1)))

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
        import faiss

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
        import faiss

        if hnsw := _part(index, faiss.IndexHNSW):
            hnsw.hnsw.efSearch = self.options["ef_search"]
        if ivf := _part(index, faiss.IndexIVF):
            ivf.nprobe = self.options["nprobe"]
        if refine := _part(index, faiss.IndexRefine):
            refine.k_factor = RERANKED

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        matrix = _float32(queries)
        k = min(k, self.live_identities)  # more cannot be found: without this bound, the loop scans it all
        if k < 1:
            return [[] for _ in range(len(matrix))]
        # Several enrolled vectors may share an identity, and dead ones are skipped: ask for more neighbours
        # until k distinct live identities show up, starting as wide as the tombstones' share suggests.
        wanted = min(self.index.ntotal, math.ceil(4 * k * self.index.ntotal / self.live_faces))
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
        import faiss

        hnsw = _part(self.index, faiss.IndexHNSW)
        if hnsw is not None:  # the graph must hold what is asked; a wide search must not slow later ones
            hnsw.hnsw.efSearch = max(self.options["ef_search"], RERANKED * wanted)
        with _threads(min(len(matrix), faiss.omp_get_max_threads())):
            squared, ids = self.index.search(matrix, wanted)
        return np.sqrt(np.maximum(squared, 0)), ids

    def _distinct(self, distances: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The first k distinct identities among live neighbours sorted nearest first, with their distances."""
        found: dict[str, float] = {}
        for distance, vector_id in zip(distances, ids, strict=True):
            if vector_id < 0:  # FAISS pads with -1 when it finds fewer neighbours than asked
                break
            if not self.alive[vector_id]:
                continue
            identity = self.identities[self.codes[vector_id]]
            if identity not in found:
                found[identity] = float(distance)
                if len(found) == k:
                    break
        return list(found.items())

    def save(self, folder: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.save(folder / CODES_FILE, self.codes)
        (folder / IDENTITIES_FILE).write_text(json.dumps(self.identities, ensure_ascii=False), "utf-8")
        np.save(folder / ALIVE_FILE, self.alive)

    def load(self, folder: Path) -> None:
        """Read back what `save` wrote; a folder saved before tombstones existed has none dead."""
        import faiss

        self.index = faiss.read_index(str(folder / INDEX_FILE))
        self._tune(self.index)
        self.codes = np.load(folder / CODES_FILE, allow_pickle=False)
        self.identities = json.loads((folder / IDENTITIES_FILE).read_text("utf-8"))
        self._set_alive(self._read_alive(folder / ALIVE_FILE))

    def _read_alive(self, path: Path) -> np.ndarray:
        """The tombstones saved at `path`; all alive when it is missing (saved before tombstones existed)."""
        if not path.exists():
            return np.ones(self.index.ntotal, dtype=bool)
        alive = np.load(path, allow_pickle=False)
        if alive.dtype != bool or alive.shape != (self.index.ntotal,):
            raise FacerecError(
                f"{path}: expected {self.index.ntotal} booleans, found {alive.dtype} {alive.shape}"
            )
        return alive


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """FAISS splits a search by query; for fewer queries than threads, the idle ones only add waiting
    (measured: a single query runs 2x faster on one thread than on two, with a far shorter tail)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(count, 1))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _part(index: faiss.Index, kind: type) -> faiss.Index | None:
    """The index of class `kind` inside a composite one (PCA, re-ranking wrappers), or None."""
    import faiss

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


def _check_whole(name: str, value: object, low: int, high: int) -> None:
    """A tuning option from the command line (JSON): a whole number within [low, high], else one line."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(
            f"head 'faiss': -H {name} must be a whole number from {low} to {high}, got {value!r}"
        )
