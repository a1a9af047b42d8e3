"""The stores side by side on bench_search.py's face-like 512-d galleries: the `local` store's `faiss`
heads, the `milvus` store on Milvus Lite and on a Milvus server (the `milvus` package's standalone server,
started here as the tests start it), and the `postgresql` store (bench_postgres.py's rows).

Per gallery size and index, one row:
- insert: faces/s of writing the whole gallery. local: fitting the head (the version's files are then
  written for the disk figure, not timed); milvus: a facerec commit (rows 1000 a call, then a flush),
  on a server up to its index being built on every row; postgresql: its commit (COPY + HNSW build);
- first search: the first query after that (Lite builds its indexes then);
- p50 / p99: single queries through `search(query, k)` as identify uses it (generation filter, distinct
  identities, k = --k), ms; on a server once the commit is SETTLED_S old (Bounded consistency: a search
  of a younger commit waits about 200 ms for the server's time tick);
- recall@1: the share of queries whose first identity is the exact nearest vector's (FAISS flat);
- RAM per face, and what was measured: local, the head's files (a reader loads them whole; the vectors
  stay on disk, mapped only by writers); Milvus Lite, the growth of a fresh reader process from an open
  database to the end of its searches (Lite runs inside it; loading the collections is in it); Milvus
  server, the growth of the server process from before the commit to after the searches (insert buffers
  it still holds included); postgresql, not measured (its pages live in the shared buffer cache and the
  OS page cache). Both Milvus figures carry some fixed cost, so with two sizes or more a second table gives
  each row's growth per added face between the sizes (the fixed cost cancels out);
- disk per face: local, the version folder (SQLite, vectors.npy, head, manifest; a write keeps the
  previous version too); Lite, its database folder; server, its data folder's growth (segments, index
  files, etcd and its message log); postgresql, its tables and indexes (pg_total_relation_size).

The servers run on this machine and share its cores with this process. Figures taken while other work
runs are noisy: the last line says how many cores other processes kept busy.

    flock /tmp/facerec-bench.lock .venv/bin/python benchmarks/bench_milvus.py [--sizes 10000 100000]
        [--lite-indexes HNSW HNSW_SQ IVF_SQ8] [--server-indexes HNSW IVF_SQ8] [--no-postgres]
        (an index list given empty, `--lite-indexes` alone, leaves that store out)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.milvus_server
from bench_embed import busy_cpu_seconds, cpu_line, wait_for_idle
from bench_search import GEOMETRIES, exact_nearest, face_like_gallery, latencies_ms

from facerec.gallery.local import folder as gallery_folder
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry
from facerec_plugins.heads.faiss import FaissHead
from facerec_plugins.stores.milvus import SETTLED_S, MilvusStore
from support.milvus_server import started

PROVENANCE = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=512, threshold=1.0)
ENROLLED_AT = "2026-01-01T00:00:00+00:00"
INDEX_WAIT_S = 1800.0


class Gallery:
    """One face-like gallery, its queries and each query's exact nearest identity."""

    def __init__(self, size: int, args) -> None:
        self.size = size
        self.known, labels, self.queries = face_like_gallery(
            size, args.per_identity, args.queries, args.intrinsic_dim, GEOMETRIES[512]
        )
        self.names = [f"person {label}" for label in labels]
        self.truth = [self.names[row] for row in exact_nearest(self.known, self.queries)]
        self.k, self.single = args.k, args.single_queries

    def entries(self) -> list[Entry]:
        return [Entry(name, f"/photos/{row}.jpg", f"{row:064x}", None, ENROLLED_AT)
                for row, name in enumerate(self.names)]  # fmt: skip

    def searched(self, head) -> dict:
        """First search, p50 / p99 of single queries and recall@1 through `head.search`."""
        start = time.perf_counter()
        head.search(torch.from_numpy(self.queries[:1]), self.k)
        first = time.perf_counter() - start
        p50, p99 = latencies_ms(
            lambda query: head.search(torch.from_numpy(query), self.k), self.queries[: self.single]
        )
        found = [result[0][0] for result in head.search(torch.from_numpy(self.queries), self.k)]
        recall = float(np.mean([a == b for a, b in zip(found, self.truth, strict=True)]))
        return {"first_s": first, "p50": p50, "p99": p99, "recall": recall}


def row(
    gallery: Gallery, store: str, index: str, insert_s: float, searched: dict, ram, ram_what, disk
) -> dict:
    return {"size": gallery.size, "store": store, "index": index, "insert": gallery.size / insert_s, **searched,
            "ram_per_face": ram, "ram_what": ram_what, "disk_per_face": disk}  # fmt: skip


def local_rows(gallery: Gallery, kinds: list[str], folder: Path) -> list[dict]:
    rows = []
    for kind in kinds:
        head = FaissHead(index=kind)
        start = time.perf_counter()
        head.fit(torch.from_numpy(gallery.known), gallery.names)
        build = time.perf_counter() - start
        searched = gallery.searched(head)
        path = folder / f"local-{kind}"
        contents = gallery_folder.Contents(
            PROVENANCE, "faiss", dict(head.options), gallery.entries(), gallery.known, []
        )
        with gallery_folder.locked(path):
            version = path / gallery_folder.write(path, contents, head)
        ram = size_of(version / gallery_folder.HEAD_FOLDER) / gallery.size
        rows.append(
            row(
                gallery,
                "local",
                f"faiss {kind}",
                build,
                searched,
                ram,
                "head files",
                size_of(version) / gallery.size,
            )
        )
        shutil.rmtree(path)
        del head
        gc.collect()
    return rows


def commit_s(store: MilvusStore, gallery: Gallery) -> float:
    start = time.perf_counter()
    with store.locked():
        base, _ = store.recover()
        store.commit(base, Change(PROVENANCE, None, {}, [], gallery.entries(), gallery.known))
    return time.perf_counter() - start


def lite_rows(gallery: Gallery, kinds: list[str], folder: Path) -> list[dict]:
    """Written by this process, searched by a fresh reader process (see reader())."""
    rows = []
    for kind in kinds:
        location = f"{folder / f'lite-{kind}.db'}?index={kind}"
        store = MilvusStore(location)
        insert = commit_s(store, gallery)
        let_go(store)
        np.save(folder / "queries.npy", gallery.queries)
        answer = subprocess.run(
            [sys.executable, __file__, "--reader", location, str(folder / "queries.npy"), str(gallery.k), str(gallery.single)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        measured = json.loads(answer.stdout.splitlines()[-1])
        found = measured.pop("found")
        measured["recall"] = float(np.mean([a == b for a, b in zip(found, gallery.truth, strict=True)]))
        ram = measured.pop("rss_bytes") / gallery.size
        disk = size_of(folder / f"lite-{kind}.db") / gallery.size
        rows.append(row(gallery, "milvus (Lite)", kind, insert, measured, ram, "reader process growth", disk))
        shutil.rmtree(folder / f"lite-{kind}.db")
    return rows


def let_go(store: MilvusStore) -> None:
    """Close this process's Milvus Lite, so that another process may open the database."""
    from milvus_lite.server_manager import server_manager_instance

    store.client.close()
    server_manager_instance.release_server(str(store.lite))


def reader(location: str, queries_file: str, k: int, single: int) -> None:
    """In a child process: open the Lite gallery, search, print what it measured as one JSON line."""
    queries = np.load(queries_file)
    store = MilvusStore(location)
    assert store._exists()  # pymilvus and Lite imported and started, the database open: any reader's cost
    before = rss_bytes(os.getpid())
    head = store.read().load_head()
    start = time.perf_counter()
    head.search(torch.from_numpy(queries[:1]), k)
    first = time.perf_counter() - start
    p50, p99 = latencies_ms(lambda query: head.search(torch.from_numpy(query), k), queries[:single])
    found = [result[0][0] for result in head.search(torch.from_numpy(queries), k)]
    grown = rss_bytes(os.getpid()) - before
    print(json.dumps({"first_s": first, "p50": p50, "p99": p99, "found": found, "rss_bytes": grown}))


def server_rows(gallery: Gallery, kinds: list[str], folder: Path) -> list[dict]:
    """Each index on a server of its own, started for it (so that its memory starts from nothing)."""
    rows = []
    for kind in kinds:
        with started(folder / f"server-{kind}") as server:
            store = MilvusStore(f"{server.uri}?index={kind}")
            ram, disk = rss_bytes(server.pid), size_of(server.data, skip="bin")
            start = time.perf_counter()
            commit_s(store, gallery)
            committed = time.perf_counter()
            wait_for_index(store)
            insert = time.perf_counter() - start
            time.sleep(max(0.0, SETTLED_S + 2 - (time.perf_counter() - committed)))
            searched = gallery.searched(store.read().load_head())
            ram = (rss_bytes(server.pid) - ram) / gallery.size
            disk = (size_of(server.data, skip="bin") - disk) / gallery.size
            rows.append(
                row(gallery, "milvus (server)", kind, insert, searched, ram, "server process growth", disk)
            )
        shutil.rmtree(folder / f"server-{kind}", ignore_errors=True)
    return rows


def wait_for_index(store: MilvusStore) -> None:
    """Until the server has built its index on every row (it builds per sealed segment, after the flush)."""
    deadline = time.monotonic() + INDEX_WAIT_S
    while time.monotonic() < deadline:
        described = store.client.describe_index(store.collection, "vector")
        if described.get("pending_index_rows", 0) == 0 and described.get("indexed_rows") == described.get(
            "total_rows"
        ):
            return
        time.sleep(0.5)
    raise SystemExit(f"{store.location}: the index was not built within {INDEX_WAIT_S:.0f} s")


def postgres_rows(sizes: list[int], args) -> list[dict]:
    from bench_postgres import postgres_rows as measured

    rows = measured(sizes, args.per_identity, args.queries, args.single_queries, args.k, args.intrinsic_dim)
    return [{**r, "store": "postgresql", "index": "HNSW (pgvector)", "ram_per_face": None, "ram_what": "not measured"}
            for r in rows]  # fmt: skip


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def size_of(path: Path, skip: str | None = None) -> int:
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and not (skip and skip in p.relative_to(path).parts[:1])
    )


def marginal_markdown(rows: list[dict]) -> str:
    """RAM and disk per face added between consecutive sizes of the same store and index."""
    lines = [
        "| store | index | faces | RAM per added face (B) | disk per added face (B) |",
        "|---|---|---|---:|---:|",
    ]
    by_kind: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["size"]):
        by_kind.setdefault((r["store"], r["index"]), []).append(r)
    for (store, index), series in by_kind.items():
        for small, large in itertools.pairwise(series):
            added = large["size"] - small["size"]
            ram = "-"
            if small["ram_per_face"] is not None:
                ram = f"{(large['ram_per_face'] * large['size'] - small['ram_per_face'] * small['size']) / added:,.0f}"
            disk = (large["disk_per_face"] * large["size"] - small["disk_per_face"] * small["size"]) / added
            lines.append(
                f"| {store} | {index} | {small['size']:,} to {large['size']:,} | {ram} | {disk:,.0f} |"
            )
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| faces | store | index | insert (faces/s) | first search (s) | p50 (ms) | p99 (ms) | recall@1 "
        "| RAM per face (B) | RAM measured as | disk per face (B) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["size"]):
        ram = f"{r['ram_per_face']:,.0f}" if r["ram_per_face"] is not None else "-"
        lines.append(
            f"| {r['size']:,} | {r['store']} | {r['index']} | {r['insert']:,.0f} | {r['first_s']:.3f} | {r['p50']:.2f} "
            f"| {r['p99']:.2f} | {r['recall']:.3f} | {ram} | {r['ram_what']} | {r['disk_per_face']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    # each list may be given empty (`--lite-indexes` alone) to leave that store out
    parser.add_argument("--local-indexes", nargs="*", default=["flat", "hnsw"])
    parser.add_argument("--lite-indexes", nargs="*", default=["HNSW", "HNSW_SQ", "IVF_SQ8"])
    parser.add_argument("--server-indexes", nargs="*", default=["HNSW", "IVF_SQ8"])  # 2.3 has no HNSW_SQ
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--queries", type=int, default=500, help="queries for recall")
    parser.add_argument("--single-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=3, help="candidates per query, as identify's --top-k")
    parser.add_argument("--intrinsic-dim", type=int, default=32)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for idle CPUs per size")
    parser.add_argument("--reader", nargs=4, help=argparse.SUPPRESS)  # the Lite reader's child process
    args = parser.parse_args()
    if args.reader:
        location, queries, k, single = args.reader
        reader(location, queries, int(k), int(single))
        return
    busy, started_at, rows = busy_cpu_seconds(), time.monotonic(), []
    own_before = own_cpu_seconds()
    for size in args.sizes:
        wait_for_idle(args.wait)
        gallery = Gallery(size, args)
        folder = Path(tempfile.mkdtemp(prefix="bench-stores-"))
        try:
            rows += local_rows(gallery, args.local_indexes, folder)
            rows += lite_rows(gallery, args.lite_indexes, folder)
            rows += server_rows(gallery, args.server_indexes, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(markdown([r for r in rows if r["size"] == size]), file=sys.stderr, flush=True)
    if not args.no_postgres:
        rows += postgres_rows(args.sizes, args)
    others = (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own_before)
    print(f"{cpu_line()}; {os.cpu_count()} cores")
    print(markdown(rows))
    if len(args.sizes) > 1:
        print(marginal_markdown(rows))
    load = max(others, 0.0) / (time.monotonic() - started_at)
    print(f"other processes (PostgreSQL's server among them) kept {load:.2f} cores busy on average")


def own_cpu_seconds() -> float:
    import resource

    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
