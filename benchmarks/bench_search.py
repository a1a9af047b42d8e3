"""Search speed and recall of facerec's `faiss` head, side by side with face_recognition's way and NumPy.

The galleries are synthetic but shaped like face galleries, not uniform noise on the sphere (the worst
case for any approximate index, and nothing like faces), in the two sizes facerec's backbones produce:
512-d (inception-resnet) and 128-d (dlib-resnet, face_recognition's encodings). Face embeddings have a
low intrinsic dimension: Gong, Boddeti & Jain (CVPR 2019) measure about 16 for SphereFace's 512-d vectors
and 9-12 for FaceNet's 128-d ones. So identities are random centres in a random `--intrinsic-dim`-
dimensional subspace (default 32, twice their figure), each enrolled `--per-identity` times with
within-person variation in that subspace (pose, light, expression) plus a small residual in all
dimensions; queries are fresh samples of enrolled identities. `--intrinsic-dim 512` (or 128) gives the
isotropic worst case.

- 512-d: centres anywhere on the subspace's unit sphere. Two photos of one person then lie about 0.8
  apart (Euclidean, unit vectors), as vggface2 embeddings of one person do, and two people about 1.41.
- 128-d: dlib's descriptors, scaled to unit length, crowd around one direction. On the 34 faces of
  ../shared/faces their mean has length 0.92, two photos of one person lie 0.27 apart on average and two
  people 0.57. So each centre is unit(c + 0.4 u), c a common direction orthogonal to the subspace and u
  on the subspace's unit sphere, and the variation is smaller: the galleries give 0.91, 0.28 and 0.58.

Rows:
- face_recognition: its `face_distance` (np.linalg.norm(known - query, axis=1)) then argmin, one query
  at a time (it has no batched search, so its queries/s is 1 / p50);
- numpy matmul: inner products `known @ query` then argmax (batched: `known @ queries.T`);
- facerec flat / hnsw / ivf: `FaissHead(index=...)` with its default settings, timed through
  `search(queries, k)` as identify uses it (identity de-duplication included); recall@1 is the share of
  queries whose nearest vector from the index is the exact nearest vector.

Removal (galleries of `--removal-from` vectors or more): the head just built is saved (fsync'd, as the
gallery store writes it), then 1% of its rows, drawn at random, are removed (`FaissHead.remove`, which
marks them dead) and the head saved again into a fresh folder; the ratio compares that with build + save,
what refitting costs. recall@1 before/after: the share of queries whose nearest face found through
`search` is the exact nearest face among those held (same identity, same distance). The last column is
the rest of a gallery version the store writes on every change: vectors.npy of the faces left, fsync'd,
and the SHA-256 of every file of the version.

Checks (`--checks`): the head just built is written as a real gallery version (facerec.gallery.local.folder,
synthetic entries), then opened, page cache warm, best of three, with and without its checks
(docs/reliability.md#checksums): as a reader opens it to search (the database and the head, each checked
before it is read), and as a writer opens it to carry it over (the database, every vector and the head);
"unchecked" does the same reads with nothing checked (SQLite, np.load's mapping, the head's `load`).

Each gallery first waits (up to `--wait` seconds) for the CPUs to go idle; a line under its table says
how many cores other processes kept busy meanwhile.

    .venv/bin/python benchmarks/bench_search.py [--sizes 10000 100000 1000000] [--dims 512 128] [--checks]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from facerec.gallery.local import folder as gallery_folder
from facerec.gallery.provenance import Provenance
from facerec.pipeline.weights import sha256_file
from facerec_plugins.heads.faiss import FaissHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import busy_cpu_seconds, cpu_line, wait_for_idle

CHUNK = 65536
REMOVED = 0.01  # the share of a gallery's faces removed in the removal measurement


@dataclass(frozen=True)
class Geometry:
    """How a backbone's unit embeddings of faces spread, as the module docstring describes."""

    dim: int
    pose: float  # within-person variation, in the intrinsic subspace
    residual: float  # everything else, in all dimensions
    spread: float | None  # the centres' distance from a common direction; None: no common direction


GEOMETRIES = {
    512: Geometry(512, pose=0.6, residual=0.33, spread=None),  # inception-resnet (vggface2-like)
    128: Geometry(128, pose=0.18, residual=0.09, spread=0.4),  # dlib-resnet
}


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


class FaceLikeSpace:
    """Identity centres and photos of them, as described in the module docstring."""

    def __init__(self, identities: int, intrinsic: int, geometry: Geometry, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        room = geometry.dim - (geometry.spread is not None)  # the common direction takes one dimension
        self.intrinsic, self.geometry = min(intrinsic, room), geometry
        basis = np.linalg.qr(self.rng.standard_normal((geometry.dim, intrinsic)))[0].T  # orthonormal rows
        self.basis = basis.astype(np.float32)
        self.common = self._common_direction() if geometry.spread is not None else None
        self.centres = np.empty((identities, geometry.dim), dtype=np.float32)
        for start in range(0, identities, CHUNK):
            stop = min(start + CHUNK, identities)
            self.centres[start:stop] = self._centres(stop - start)

    def _common_direction(self) -> np.ndarray:
        """A unit vector orthogonal to the subspace."""
        vector = self.rng.standard_normal(self.geometry.dim).astype(np.float32)
        vector -= self.basis.T @ (self.basis @ vector)
        return vector / np.linalg.norm(vector)

    def _centres(self, count: int) -> np.ndarray:
        centres = unit_rows(self._in_subspace(count))
        if self.common is None:
            return centres
        return unit_rows(self.common + self.geometry.spread * centres)

    def _in_subspace(self, count: int) -> np.ndarray:
        return self.rng.standard_normal((count, self.intrinsic), dtype=np.float32) @ self.basis

    def photos(self, owners: np.ndarray) -> np.ndarray:
        """One fresh unit vector of identity `owners[i]` per row, built in chunks."""
        dim, pose, residual = self.geometry.dim, self.geometry.pose, self.geometry.residual
        out = np.empty((len(owners), dim), dtype=np.float32)
        for start in range(0, len(owners), CHUNK):
            rows = owners[start : start + CHUNK]
            variation = pose / math.sqrt(self.intrinsic) * self._in_subspace(len(rows))
            noise = residual / math.sqrt(dim) * self.rng.standard_normal((len(rows), dim), dtype=np.float32)
            out[start : start + len(rows)] = unit_rows(self.centres[rows] + variation + noise)
        return out


def face_like_gallery(
    size: int, per_identity: int, queries: int, intrinsic: int, geometry: Geometry, seed: int = 0
):
    """(gallery vectors, their identity labels, query vectors)."""
    identities = max(1, size // per_identity)
    space = FaceLikeSpace(identities, intrinsic, geometry, seed)
    labels = np.arange(size) % identities
    gallery = space.photos(labels)
    query_vectors = space.photos(space.rng.integers(0, identities, queries))
    return gallery, labels, query_vectors


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def latencies_ms(search_one, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 of one-query-at-a-time calls, in milliseconds."""
    times = []
    for query in queries:
        start = time.perf_counter()
        search_one(query[None, :])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def batch_qps(search_many, queries: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(queries), batch):
        search_many(queries[first : first + batch])
    return len(queries) / (time.perf_counter() - start)


def face_recognition_search(known: np.ndarray):
    """face_recognition.face_distance + argmin: a full Euclidean scan per query (its README's recipe)."""

    def search_one(query: np.ndarray) -> int:
        return int(np.argmin(np.linalg.norm(known - query[0], axis=1)))

    return search_one


def numpy_matmul_search(known: np.ndarray):
    def search_many(queries: np.ndarray) -> np.ndarray:
        return np.argmax(known @ queries.T, axis=0)

    return search_many


def exact_nearest(known: np.ndarray, queries: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatIP(known.shape[1])
    index.add(known)
    return index.search(queries, 1)[1][:, 0]


def bench_size(size: int, dim: int, args) -> tuple[list[dict], list[dict], list[dict]]:
    known, labels, queries = face_like_gallery(
        size, args.per_identity, args.queries, args.intrinsic_dim, GEOMETRIES[dim]
    )
    truth = exact_nearest(known, queries)
    single = queries[: args.single_queries]
    rows, removals, checks = [], [], []

    scan_queries = single[: max(10, args.single_queries * 10_000 // size)]  # ~1 s a query at 1M
    p50, p99 = latencies_ms(face_recognition_search(known), scan_queries)
    rows.append(row(size, dim, "face_recognition (np.linalg.norm)", 0.0, p50, p99, 1000 / p50, 1.0, 0.0))

    matmul = numpy_matmul_search(known)
    p50, p99 = latencies_ms(matmul, single)
    qps = batch_qps(matmul, queries, args.batch)
    rows.append(row(size, dim, "numpy matmul", 0.0, p50, p99, qps, 1.0, 0.0))

    label_names = [str(label) for label in labels]
    for kind in args.indexes:
        gc.collect()
        before = rss_mb()
        head = FaissHead(index=kind, **args.head_options)
        start = time.perf_counter()
        head.fit(torch.from_numpy(known), label_names)
        build_s = time.perf_counter() - start
        memory = rss_mb() - before
        found = head.index.search(queries, 1)[1][:, 0]
        recall = float(np.mean(found == truth))
        p50, p99 = latencies_ms(lambda q, head=head: head.search(torch.from_numpy(q), args.k), single)
        qps = batch_qps(lambda q, head=head: head.search(torch.from_numpy(q), args.k), queries, args.batch)
        rows.append(row(size, dim, f"facerec faiss {kind}", build_s, p50, p99, qps, recall, memory))
        if args.checks:
            checks.append({"vectors": size, "dims": dim, "method": f"facerec faiss {kind}"})
            checks[-1].update(bench_checks(head, known, label_names))
        if size >= args.removal_from:
            gallery = Gallery(known, label_names, queries, truth)
            removals.append(
                {"vectors": size, "dims": dim, "method": f"facerec faiss {kind}", "build_s": build_s}
            )
            removals[-1].update(bench_removal(head, gallery))
        del head
    return rows, removals, checks


def bench_checks(head: FaissHead, vectors: np.ndarray, labels: list[str]) -> dict:
    """Write `head` and `vectors` as a gallery version, then time opening it with and without checks."""
    provenance = Provenance(
        "inception-resnet", None, "0" * 64, None, "mtcnn", embedding_size=vectors.shape[1]
    )
    entries = [
        gallery_folder.Entry(label, f"/photos/{row}.jpg", f"{row:064x}", None, "2026-01-01T00:00:00+00:00")
        for row, label in enumerate(labels)
    ]
    contents = gallery_folder.Contents(provenance, "faiss", dict(head.options), entries, vectors, [])
    with tempfile.TemporaryDirectory() as temp:
        path = Path(temp) / "gallery"
        with gallery_folder.locked(path):
            start = time.perf_counter()
            version = gallery_folder.write(path, contents, head)
            write_s = time.perf_counter() - start
        folder = path / version
        sizes = {name: (folder / name).stat().st_size for name in ("gallery.sqlite", "vectors.npy")}
        head_bytes = sum(f.stat().st_size for f in (folder / "head").iterdir())
        return {
            "write_s": write_s,
            "files_mb": (sum(sizes.values()) + head_bytes) / 2**20,
            "reader_checked_s": best_of(3, lambda: open_checked(path, writer=False)),
            "reader_unchecked_s": best_of(3, lambda: open_unchecked(folder, head.options, writer=False)),
            "writer_checked_s": best_of(3, lambda: open_checked(path, writer=True)),
            "writer_unchecked_s": best_of(3, lambda: open_unchecked(folder, head.options, writer=True)),
        }


def best_of(times: int, call: Callable[[], object]) -> float:
    call()  # the page cache warm, as for a gallery in use
    return min(timed(call) for _ in range(times))


def open_checked(path: Path, writer: bool) -> None:
    """What a reader (read + load_head) or a writer (recover, every vector, the head) does to open."""
    if writer:
        snapshot, problem = gallery_folder.recover(path)
        assert problem is None, problem
        np.asarray(snapshot.vectors(range(len(snapshot))))  # a write copies the rows it keeps
    else:
        snapshot = gallery_folder.read(path)
    snapshot.load_head()
    snapshot.close()


def open_unchecked(folder: Path, options: dict, writer: bool) -> None:
    """The same reads with nothing checked."""
    import sqlite3

    db = sqlite3.connect(
        f"{folder.joinpath('gallery.sqlite').resolve().as_uri()}?mode=ro&immutable=1", uri=True
    )
    dict(db.execute("SELECT key, value FROM meta"))
    count = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    if writer:
        matrix = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        np.asarray(matrix[np.arange(count)])
    FaissHead(**options).load(folder / "head")
    db.close()


@dataclass(frozen=True)
class Gallery:
    """What a head was fitted on, the queries, and each query's exact nearest row of `vectors`."""

    vectors: np.ndarray
    labels: list[str]
    queries: np.ndarray
    truth: np.ndarray

    def without(self, rows: np.ndarray) -> Gallery:
        kept = np.setdiff1d(np.arange(len(self.vectors)), rows)
        vectors = self.vectors[kept]
        labels = [self.labels[i] for i in kept]
        return Gallery(vectors, labels, self.queries, exact_nearest(vectors, self.queries))


def bench_removal(head: FaissHead, gallery: Gallery) -> dict:
    """Time saving `head`, then removing REMOVED of its rows and saving it again; recall before and after."""
    rows = np.random.default_rng(1).choice(
        len(gallery.vectors), int(REMOVED * len(gallery.vectors)), replace=False
    )
    before = search_recall(head, gallery)
    with tempfile.TemporaryDirectory() as temp:
        save_s = timed(lambda: save_synced(head, Path(temp) / "fitted"))
        start = time.perf_counter()
        if not head.remove(rows.tolist()):
            raise SystemExit(f"the head declined to remove {REMOVED:.0%} of its faces")
        save_synced(head, Path(temp) / "removed")
        remove_s = time.perf_counter() - start
        head_mb = sum(f.stat().st_size for f in (Path(temp) / "removed").iterdir()) / 2**20
        left = gallery.without(rows)
        version_s = timed(lambda: write_version(left.vectors, Path(temp) / "removed"))
    return {
        "save_s": save_s,
        "remove_s": remove_s,
        "recall_before": before,
        "recall_after": search_recall(head, left),
        "head_mb": head_mb,
        "version_s": version_s,
    }


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def save_synced(head: FaissHead, folder: Path) -> None:
    """`head.save` into a new folder, every file fsync'd, as the gallery store writes a version."""
    folder.mkdir()
    head.save(folder)
    for path in folder.iterdir():
        fsync(path)


def fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_version(vectors: np.ndarray, folder: Path) -> None:
    """The rest of a gallery version: vectors.npy, fsync'd, then the SHA-256 of every file (the manifest)."""
    np.save(folder / "vectors.npy", vectors)
    fsync(folder / "vectors.npy")
    for path in folder.iterdir():
        sha256_file(path)


def search_recall(head: FaissHead, gallery: Gallery) -> float:
    """The share of queries whose nearest face found by `search` is the exact nearest: same identity and
    same distance (which pins the face), so dead faces the head skips count as they should."""
    found = head.search(torch.from_numpy(gallery.queries), 1)
    exact = np.linalg.norm(gallery.vectors[gallery.truth] - gallery.queries, axis=1)
    hits = [
        bool(nearest) and nearest[0][0] == gallery.labels[row] and abs(nearest[0][1] - distance) < 1e-4
        for nearest, row, distance in zip(found, gallery.truth, exact, strict=True)
    ]
    return float(np.mean(hits))


def row(size, dim, method, build_s, p50, p99, qps, recall, memory_mb) -> dict:
    return {
        "vectors": size,
        "dims": dim,
        "method": method,
        "build_s": build_s,
        "p50_ms": p50,
        "p99_ms": p99,
        "qps": qps,
        "recall@1": recall,
        "index_mb": memory_mb,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| vectors | dims | method | build (s) | p50 (ms) | p99 (ms) | queries/s (batched) | recall@1 | index memory (MB) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['vectors']:,} | {r['dims']} | {r['method']} | {r['build_s']:.1f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['qps']:,.{1 if r['qps'] < 10 else 0}f} | {r['recall@1']:.4f} | {r['index_mb']:,.0f} |"
        )
    return "\n".join(lines)


def removal_markdown(rows: list[dict]) -> str:
    lines = [
        "| vectors | dims | method | build (s) | save (s) | remove 1% + save (s) | (remove + save) / (build + save) "
        "| recall@1 before | recall@1 after | head files (MB) | vectors.npy + SHA-256 (s) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["remove_s"] / (r["build_s"] + r["save_s"])
        lines.append(
            f"| {r['vectors']:,} | {r['dims']} | {r['method']} | {r['build_s']:.1f} | {r['save_s']:.2f} "
            f"| {r['remove_s']:.2f} | {ratio:.1%} | {r['recall_before']:.4f} | {r['recall_after']:.4f} "
            f"| {r['head_mb']:,.0f} | {r['version_s']:.2f} |"
        )
    return "\n".join(lines)


def checks_markdown(rows: list[dict]) -> str:
    lines = [
        "| vectors | dims | method | files (MB) | write (s) | reader open, checked (s) | unchecked (s) | cost "
        "| writer open, checked (s) | unchecked (s) | cost |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        reader = r["reader_checked_s"] - r["reader_unchecked_s"]
        writer = r["writer_checked_s"] - r["writer_unchecked_s"]
        lines.append(
            f"| {r['vectors']:,} | {r['dims']} | {r['method']} | {r['files_mb']:,.0f} | {r['write_s']:.2f} "
            f"| {r['reader_checked_s']:.3f} | {r['reader_unchecked_s']:.3f} "
            f"| +{reader:.3f} s ({reader / r['reader_unchecked_s']:+.0%}) "
            f"| {r['writer_checked_s']:.3f} | {r['writer_unchecked_s']:.3f} "
            f"| +{writer:.3f} s ({writer / r['writer_unchecked_s']:+.0%}) |"
        )
    return "\n".join(lines)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", choices=list(GEOMETRIES), default=list(GEOMETRIES))
    parser.add_argument("--indexes", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--per-identity", type=int, default=4, help="enrolled samples per identity")
    parser.add_argument("--queries", type=int, default=2000, help="queries for recall and batched speed")
    parser.add_argument("--single-queries", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=3, help="candidates per query, as identify's --top-k")
    parser.add_argument("--intrinsic-dim", type=int, default=32, help="the dims: isotropic worst case")
    parser.add_argument("--ef-search", type=int, help="default: the head's")
    parser.add_argument("--nprobe", type=int, help="default: the head's")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for idle CPUs per gallery")
    parser.add_argument(
        "--removal-from", type=int, default=100_000, help="smallest gallery to time removal on"
    )
    parser.add_argument(
        "--checks", action="store_true", help="also time opening each head's gallery with and without checks"
    )
    args = parser.parse_args()
    args.head_options = {
        name: value
        for name, value in (("ef_search", args.ef_search), ("nprobe", args.nprobe))
        if value is not None
    }
    print(cpu_line())
    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, {faiss.omp_get_max_threads()} threads, "
        f"intrinsic dimension {args.intrinsic_dim}, {args.per_identity} photos per identity"
    )
    rows, removals, checks = [], [], []
    for size in args.sizes:
        for dim in args.dims:
            wait_for_idle(args.wait)
            busy, ours, started = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
            searched, removed, checked = bench_size(size, dim, args)
            rows.extend(searched)
            removals.extend(removed)
            checks.extend(checked)
            others = (busy_cpu_seconds() - busy) - (own_cpu_seconds() - ours)
            print(markdown(rows), flush=True)
            if removals:
                print(removal_markdown(removals), flush=True)
            if checks:
                print(checks_markdown(checks), flush=True)
            print(
                f"{size:,} x {dim}-d: other processes kept {max(others, 0.0) / (time.perf_counter() - started):.2f} "
                "cores busy",
                flush=True,
            )


if __name__ == "__main__":
    main()
