"""The `postgresql` store (PostgreSQL 16 + pgvector 0.6 from the `pgserver` package) on bench_search.py's
face-like 512-d galleries; recall against an exact search.

Per gallery size, one row:
- insert: a facerec commit of 99% of the gallery into an empty database (entries and vectors by binary
  COPY, then the HNSW build, m 16 / ef_construction 64, in the same transaction), vectors/s;
- add 1%: a second commit adding the last 1% (rows inserted into the built index), vectors/s;
- remove 1%: a third commit removing 1% of the faces, s;
- first search: the first query after the commit, s;
- p50 / p99: single queries through `search(query, k)` as identify uses it (generation filter, distinct
  identities, k = --k), ms, over one connection, TCP on 127.0.0.1;
- recall@1: the share of queries whose first identity is that of the exact nearest vector (FAISS
  IndexFlatIP over all vectors);
- disk: every table and index of the gallery after those commits (pg_total_relation_size), MB, and
  bytes per face.

The server runs on this machine, so its work shares the cores with this process: figures are the
store's and the server's together. `postgres_rows(sizes, ...)` gives the rows to another script (a
combined table of stores) with the keys bench_milvus.py's rows have, plus `add_rate`, `remove_s` and
`disk_per_face`.

    flock /tmp/facerec-bench.lock .venv/bin/python benchmarks/bench_postgres.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# support.postgres: the server the tests start
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_embed import busy_cpu_seconds, cpu_line, wait_for_idle
from bench_search import GEOMETRIES, exact_nearest, face_like_gallery, latencies_ms

from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry
from facerec_plugins.stores.postgresql import PostgresStore
from support.postgres import Postgres, started

PROVENANCE = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=512, threshold=1.0)
ADDED = 0.01


def entries(names: list[str], start: int = 0) -> list[Entry]:
    return [
        Entry(
            name, f"/photos/{row}.jpg", f"{row:064x}", (10.0, 20.0, 110.0, 140.0), "2026-01-01T00:00:00+00:00"
        )
        for row, name in enumerate(names, start)
    ]


def commit_s(store: PostgresStore, keep: list[int], added: list[Entry], vectors: np.ndarray) -> float:
    start = time.perf_counter()
    with store.locked():
        base, _ = store.recover()
        store.commit(base, Change(PROVENANCE, None, {}, keep, added, vectors))
    return time.perf_counter() - start


def disk_bytes(server: Postgres, database: str, table: str) -> int:
    with server.admin(database) as connection:
        return connection.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "WHERE c.relkind = 'r' AND c.relname LIKE %s",
            [f"{table}%"],
        ).fetchone()[0]


def postgres_row(
    server: Postgres, size: int, known, names, queries, truth_names, k: int, single: int
) -> dict:
    """One gallery of `size` faces in a database of its own (see the module docstring)."""
    database = f"bench_{size}"
    store = PostgresStore(server.database(database)[len("postgresql:") :])
    added = max(1, int(size * ADDED))
    build = commit_s(store, [], entries(names[:-added]), known[:-added])
    grow = commit_s(store, list(range(size - added)), entries(names[-added:], size - added), known[-added:])
    remove = commit_s(store, list(range(added, size)), [], None)
    head = store.read().load_head()
    start = time.perf_counter()
    head.search(torch.from_numpy(queries[:1]), k)
    first = time.perf_counter() - start
    p50, p99 = latencies_ms(lambda query: head.search(torch.from_numpy(query), k), queries[:single])
    found = [result[0][0] for result in head.search(torch.from_numpy(queries), k)]
    recall = float(np.mean([a == b for a, b in zip(found, truth_names, strict=True)]))
    disk = disk_bytes(server, database, store.table)
    store.close()
    return {
        "size": size,
        "method": "postgresql",
        "insert": (size - added) / build,
        "add_rate": added / grow,
        "remove_s": remove,
        "first_s": first,
        "p50": p50,
        "p99": p99,
        "recall": recall,
        "disk_mb": disk / 2**20,
        "disk_per_face": disk / size,
    }


def postgres_rows(sizes, per_identity: int = 4, queries: int = 500, single: int = 200, k: int = 3,
                  intrinsic: int = 32) -> list[dict]:  # fmt: skip
    """A row per size, on a server started for them and stopped after (for a combined table)."""
    rows = []
    with started() as server:
        for size in sizes:
            known, labels, query_vectors = face_like_gallery(
                size, per_identity, queries, intrinsic, GEOMETRIES[512]
            )
            names = [f"person {label}" for label in labels]
            truth_names = [names[row] for row in exact_nearest(known, query_vectors)]
            wait_for_idle(60)
            rows.append(postgres_row(server, size, known, names, query_vectors, truth_names, k, single))
            print(markdown(rows[-1:]), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| vectors | insert (vectors/s) | add 1% (vectors/s) | remove 1% (s) | first search (s) | p50 (ms) "
        "| p99 (ms) | recall@1 | disk (MB) | disk per face (bytes) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']:,} | {row['insert']:,.0f} | {row['add_rate']:,.0f} | {row['remove_s']:.2f} "
            f"| {row['first_s']:.3f} "
            f"| {row['p50']:.2f} | {row['p99']:.2f} | {row['recall']:.3f} | {row['disk_mb']:.0f} "
            f"| {row['disk_per_face']:,.0f} |"
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
    busy = busy_cpu_seconds()
    started_at = time.monotonic()
    rows = postgres_rows(
        args.sizes, args.per_identity, args.queries, args.single_queries, args.k, args.intrinsic_dim
    )
    load = (busy_cpu_seconds() - busy) / (time.monotonic() - started_at)
    print(f"{cpu_line()}; {os.cpu_count()} cores; busy {load:.2f} cores on average during the run "
          f"(this process and the server included); k = {args.k}\n")  # fmt: skip
    print(markdown(rows))


if __name__ == "__main__":
    main()
