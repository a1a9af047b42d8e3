"""The `milvus` store (Milvus Lite, embedded) beside the `faiss` head, on bench_search.py's face-like
512-d galleries.

Rows per gallery size:
- faiss default / faiss flat: `FaissHead()` (flat up to 50k vectors, PCA128 + HNSW32 + exact re-ranking
  past that) and `FaissHead(index="flat")`; "insert" is the fit (vectors/s).
- milvus-lite: `MilvusStore("PATH.db")`: a facerec commit of the gallery (entries + vectors inserted
  1000 rows a call, HNSW M 32 / efConstruction 200 built by Lite), then `search` as identify uses it
  (generation filter, distinct identities, k = --k). "first search" is the first query after the commit
  (Lite builds its index lazily), RSS the growth of this process (Lite runs inside it), disk the size of
  the database folder.

Latency: single queries through `search(query, k)`, p50/p99 in ms. recall@1: the share of queries whose
first identity is that of the exact nearest vector (FAISS IndexFlatIP over all vectors).

    .venv/bin/python benchmarks/bench_milvus.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import GEOMETRIES, exact_nearest, face_like_gallery, latencies_ms, rss_mb

from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry
from facerec_plugins.heads.faiss import FaissHead
from facerec_plugins.stores.milvus import MilvusStore

PROVENANCE = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=512, threshold=1.0)


def faiss_rows(size: int, known, names, queries, truth_names, k: int, single: int) -> list[dict]:
    rows = []
    for label, options in (("faiss default", {}), ("faiss flat", {"index": "flat"})):
        head = FaissHead(**options)
        start = time.perf_counter()
        head.fit(torch.from_numpy(known), names)
        build = time.perf_counter() - start
        rows.append(measure(size, label, head, build, None, queries, truth_names, k, single))
        del head
        gc.collect()
    return rows


def milvus_row(size: int, known, names, queries, truth_names, k: int, single: int, folder: Path) -> dict:
    before = rss_mb()
    store = MilvusStore(str(folder / "bench.db"))
    entries = [Entry(name, f"/photos/{row}.jpg", f"{row:064x}", None, "2026-01-01T00:00:00+00:00")
               for row, name in enumerate(names)]  # fmt: skip
    start = time.perf_counter()
    with store.locked():
        base, _ = store.recover()
        store.commit(base, Change(PROVENANCE, None, {}, [], entries, known))
    build = time.perf_counter() - start
    del entries
    head = store.read().load_head()
    start = time.perf_counter()
    head.search(torch.from_numpy(queries[:1]), k)
    first = time.perf_counter() - start
    row = measure(size, "milvus-lite", head, build, first, queries, truth_names, k, single)
    row["rss_mb"] = rss_mb() - before
    row["disk_mb"] = sum(p.stat().st_size for p in (folder / "bench.db").rglob("*") if p.is_file()) / 2**20
    return row


def measure(size, label, head, build, first, queries, truth_names, k, single) -> dict:
    p50, p99 = latencies_ms(lambda query: head.search(torch.from_numpy(query), k), queries[:single])
    found = [result[0][0] for result in head.search(torch.from_numpy(queries), k)]
    recall = float(np.mean([a == b for a, b in zip(found, truth_names, strict=True)]))
    return {"size": size, "method": label, "insert": size / build, "first_s": first, "p50": p50, "p99": p99,
            "recall": recall}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = [
        "| vectors | method | insert (vectors/s) | first search (s) | p50 (ms) | p99 (ms) | recall@1 "
        "| RSS (MB) | disk (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        first = f"{row['first_s']:.2f}" if row["first_s"] is not None else "-"
        rss = f"{row['rss_mb']:.0f}" if "rss_mb" in row else "-"
        disk = f"{row['disk_mb']:.0f}" if "disk_mb" in row else "-"
        lines.append(
            f"| {row['size']:,} | {row['method']} | {row['insert']:,.0f} | {first} | {row['p50']:.2f} "
            f"| {row['p99']:.2f} | {row['recall']:.3f} | {rss} | {disk} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--queries", type=int, default=500, help="queries for recall")
    parser.add_argument("--single-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=3, help="candidates per query, as identify's --top-k")
    parser.add_argument("--intrinsic-dim", type=int, default=32)
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        known, labels, queries = face_like_gallery(
            size, args.per_identity, args.queries, args.intrinsic_dim, GEOMETRIES[512]
        )
        names = [f"person {label}" for label in labels]
        truth_names = [names[row] for row in exact_nearest(known, queries)]
        rows += faiss_rows(size, known, names, queries, truth_names, args.k, args.single_queries)
        folder = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
        try:
            rows.append(
                milvus_row(size, known, names, queries, truth_names, args.k, args.single_queries, folder)
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(markdown(rows[-3:]), file=sys.stderr, flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
