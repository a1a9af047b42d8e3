"""Search speed and recall of facerec's `faiss` head, side by side with face_recognition's way and NumPy.

The gallery is synthetic but shaped like a face gallery, not uniform noise on the sphere (the worst case
for any approximate index, and nothing like faces): identities are random unit centres, each enrolled
with `--per-identity` noisy samples, and queries are fresh noisy samples of enrolled identities. The
noise is set so that two photos of one person lie about 0.8 apart (Euclidean, unit vectors), as
vggface2 embeddings of one person do, while different people lie about 1.41 apart.

Rows:
- face_recognition: its `face_distance` (np.linalg.norm(known - query, axis=1)) then argmin, per query;
- numpy matmul: inner products `known @ query` then argmax (batched: `known @ queries.T`);
- facerec flat / hnsw / ivf: `FaissHead(index=...)`, timed through `search(queries, k)` as identify uses
  it (identity de-duplication included); recall@1 is the share of queries whose nearest vector from the
  index is the exact nearest vector.

    .venv/bin/python benchmarks/bench_search.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import faiss
import numpy as np
import torch

from facerec_plugins.faiss_head import FaissHead

DIM = 512
SAME_PERSON_DISTANCE = 0.8


def noise_scale(distance: float) -> float:
    """Norm of the (orthogonal) noise that puts a sample `distance` from its centre's other samples.

    Two samples (c + s u)/sqrt(1 + s^2) with independent u share cos = 1 / (1 + s^2), so
    distance^2 = 2 - 2 / (1 + s^2).
    """
    return math.sqrt(2.0 / (2.0 - distance**2) - 1.0)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def noisy_samples(centres: np.ndarray, owners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One fresh sample of centre `owners[i]` per row, built in chunks to keep memory at the output's."""
    scale = noise_scale(SAME_PERSON_DISTANCE) / math.sqrt(DIM)
    out = np.empty((len(owners), DIM), dtype=np.float32)
    for start in range(0, len(owners), 65536):
        rows = owners[start : start + 65536]
        noise = rng.standard_normal((len(rows), DIM), dtype=np.float32)
        out[start : start + len(rows)] = unit_rows(centres[rows] + scale * noise)
    return out


def face_like_gallery(size: int, per_identity: int, queries: int, seed: int = 0):
    """(gallery vectors, their identity labels, query vectors) as described in the module docstring."""
    rng = np.random.default_rng(seed)
    identities = max(1, size // per_identity)
    centres = unit_rows(rng.standard_normal((identities, DIM), dtype=np.float32))
    labels = np.arange(size) % identities
    gallery = noisy_samples(centres, labels, rng)
    query_vectors = noisy_samples(centres, rng.integers(0, identities, queries), rng)
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
    index = faiss.IndexFlatIP(DIM)
    index.add(known)
    return index.search(queries, 1)[1][:, 0]


def bench_size(size: int, args) -> list[dict]:
    known, labels, queries = face_like_gallery(size, args.per_identity, args.queries)
    truth = exact_nearest(known, queries)
    single = queries[: args.single_queries]
    rows = []

    scan_queries = single[: max(10, args.single_queries * 10_000 // size)]  # ~1 s a query at 1M
    p50, p99 = latencies_ms(face_recognition_search(known), scan_queries)
    rows.append(row(size, "face_recognition (np.linalg.norm)", 0.0, p50, p99, 1000 / p50, 1.0, 0.0))

    matmul = numpy_matmul_search(known)
    p50, p99 = latencies_ms(matmul, single)
    qps = batch_qps(matmul, queries, args.batch)
    rows.append(row(size, "numpy matmul", 0.0, p50, p99, qps, 1.0, 0.0))

    label_names = [str(label) for label in labels]
    for kind in args.indexes:
        gc.collect()
        before = rss_mb()
        head = FaissHead(index=kind, ef_search=args.ef_search, nprobe=args.nprobe, hnsw_m=args.hnsw_m)
        start = time.perf_counter()
        head.fit(torch.from_numpy(known), label_names)
        build_s = time.perf_counter() - start
        memory = rss_mb() - before
        found = head.index.search(queries, 1)[1][:, 0]
        recall = float(np.mean(found == truth))
        p50, p99 = latencies_ms(lambda q, head=head: head.search(torch.from_numpy(q), args.k), single)
        qps = batch_qps(lambda q, head=head: head.search(torch.from_numpy(q), args.k), queries, args.batch)
        rows.append(row(size, f"facerec faiss {kind}", build_s, p50, p99, qps, recall, memory))
        del head
    return rows


def row(size, method, build_s, p50, p99, qps, recall, memory_mb) -> dict:
    return {
        "vectors": size,
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
        "| vectors | method | build (s) | p50 (ms) | p99 (ms) | queries/s (batched) | recall@1 | index memory (MB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['vectors']:,} | {r['method']} | {r['build_s']:.1f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['qps']:,.0f} | {r['recall@1']:.4f} | {r['index_mb']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--indexes", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--per-identity", type=int, default=4, help="enrolled samples per identity")
    parser.add_argument("--queries", type=int, default=2000, help="queries for recall and batched speed")
    parser.add_argument("--single-queries", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=3, help="candidates per query, as identify's --top-k")
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--hnsw-m", type=int, default=32)
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, numpy {np.__version__}, {faiss.omp_get_max_threads()} threads")
    rows = []
    for size in args.sizes:
        rows.extend(bench_size(size, args))
        print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
