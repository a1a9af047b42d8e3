"""The `milvus` store: a gallery in a Milvus collection, which searches it by itself (`fits_heads` False).

`--gallery milvus:PATH.db` is Milvus Lite, embedded in this process (the "file" is a folder Lite
manages; a relative PATH is relative to the working directory); `--gallery milvus:http://HOST:PORT` is a
Milvus server or cluster, through the same code (`http://USER:PASSWORD@HOST:PORT` for a server with
authentication; messages show the password as `***`). Either takes `?index=TYPE` (the vector index of a
new gallery, see Search) and `#COLLECTION` (default `facerec`), in that order.

Layout. Collection COLLECTION holds one row per enrolled face: `id` (INT64 primary key, given by
facerec in enrollment order, so ascending ids are the row order), `vector`, the Entry fields, and two
INT64 fields that make commits atomic for readers: `generation` (the commit that added the row) and
`retired` (the commit that removed it; 0 while live). COLLECTION_meta (VARCHAR key, VARCHAR JSON value,
a dummy 2-d vector because Milvus wants one) holds the record `state` (the committed generation G,
provenance, counts, index settings), skipped images as `skipped/G/<hash of source>` rows with the same
generation fields, and, for a server, the writer's `lease`. `facerec serve` keeps the photos it enrolls in
PATH.db/facerec-uploads/COLLECTION for Lite (`uploads`); a server has no folder, so serve takes --uploads.

Commits. A reader of generation G sees the rows with `generation <= G and (retired == 0 or retired > G)`
(search and query alike). A commit writes generation G+1 beside G: inserts the added rows (generation
G+1), marks removed ones retired = G+1, writes skipped rows likewise, then makes G+1 current with ONE
upsert of `state`; only then are rows retired <= G+1 deleted. A writer killed before that upsert leaves
readers on G, and the next writer's `recover` deletes rows of generations > G and revives rows retired
after G. Every call uses Strong consistency, so what one call wrote the next one reads, but searches of
a generation committed more than SETTLED_S ago: a Strong call waits for the server's next time tick
(about 200 ms on a Milvus 2.3 server), and a search that waits runs 20 times slower than one with
Bounded consistency, which sees every write older than the server's graceful time (5 s by default). The
age is the reader's clock against the writer's, so SETTLED_S leaves room for clocks 25 s apart.

Search. L2 on unit vectors (Milvus answers squared distances; facerec reports their square root), as
the `faiss` head's flat search: up to k distinct identities nearest first. A search asks for 4k rows;
when they hold fewer than k identities it asks again for the nearest rows of the identities not found
yet (those are all farther than the first rows), widening up to Milvus's limit of 16384 a call. The
vector index is chosen when the collection is made, by `?index=` (INDEXES), and recorded in `state`:
- HNSW (the default): M 32, efConstruction 200, ef at search max(64, limit); float32 vectors in a graph;
- HNSW_SQ: the same graph over 8-bit scalar-quantized vectors (a quarter of the memory; Milvus 2.5 and
  later, and Milvus Lite; Milvus 2.3 and 2.4 servers refuse it in one line);
- IVF_SQ8: 1024 k-means cells per segment of 8-bit vectors, NPROBE of them searched;
- FLAT: an exact scan, for small galleries.
Quantized indexes may answer distances computed on the quantized vectors (IVF_SQ8 on face-like 512-d
vectors, measured: 0.0002 off typically, 0.003 at most; only a face that near the threshold can be decided
otherwise). A writer refuses an `?index=` other than the gallery's own (a new #COLLECTION takes another
index). Milvus builds an index per sealed segment; Lite 3 does it through FAISS, a server through
knowhere; segments too small to index (a server's below 1024 rows) are scanned exactly.

One writer at a time. For Milvus Lite an flock on `PATH.db.lock` beside the database, which dies with
its process (the file stays: removing it would let a waiting writer lock an unlinked file). Lite itself
lets one process open a database at a time, so a reader (`identify`, `serve`) started while another
process has it open gets a one-line "busy" error: serve and index together need a server. For a
server, a lease record in the meta collection (see `_Lease`): it is not a consensus lock; see there.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from facerec.plugin import (
    Change,
    Entry,
    FacerecError,
    GalleryBusy,
    Provenance,
    Skipped,
    UsageError,
    hookimpl,
    now,
    without_password,
)

DEFAULT_COLLECTION = "facerec"
FORMAT = 1
STATE, LEASE, SKIPPED = "state", "lease", "skipped/"
UPLOADS = "facerec-uploads"
BATCH = 1000  # rows a call: 1000 x 512 floats is 2 MB, far under gRPC's 64 MB message limit
MAX_LIMIT = 16384  # Milvus's cap on a search's limit
MIN_EF = 64
LITE_SCAN_VALUES = 2**26  # float32 values of (queries x rows x dim) one Milvus Lite search may scan: 256 MB
INDEXES = {  # `?index=`: the index types a gallery may choose, with facerec's build settings
    "HNSW": {"M": 32, "efConstruction": 200},
    "HNSW_SQ": {"M": 32, "efConstruction": 200, "sq_type": "SQ8"},
    "IVF_SQ8": {"nlist": 1024},
    "FLAT": {},
}
DEFAULT_INDEX = "HNSW"
NPROBE = 32  # IVF cells searched of 1024
CONNECT_TIMEOUT_S = 10.0
LEASE_S = 60.0  # a lease not renewed for this long is another writer's to take
SETTLED_S = 30.0  # a generation this old is searched with Bounded consistency (see the module docstring)
LEASE_SETTLE_S = 0.3  # how long a writer waits before re-reading its lease, to see a racing writer's
VARCHAR_MAX = 65535
COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,250}")
ENTRY_FIELDS = ["id", "identity", "source", "sha256", "box", "enrolled_at"]
USAGE = (
    "expected milvus:PATH.db or milvus:http://HOST:PORT, each with an optional ?index=TYPE and #COLLECTION"
)


def _pymilvus():
    """pymilvus, imported when a milvus gallery is used (the extra `facerec[milvus]`)."""
    try:
        import pymilvus
    except ImportError:
        raise FacerecError("the milvus store needs pymilvus: pip install 'facerec[milvus]'") from None
    # Their warnings (a client-side timestamp, Lite's traceback of a busy database) would break the
    # CLI's one-line errors; what matters reaches the user as a FacerecError.
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
    return pymilvus


def _milvus_errors(method):
    """Milvus's exceptions (a server gone, a refused call) as one line naming the gallery."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FacerecError:
            raise
        except Exception as error:
            pymilvus = _pymilvus()
            if not isinstance(error, pymilvus.MilvusException):
                raise
            message = getattr(error, "message", None) or str(error)
            raise FacerecError(f"{self.location}: Milvus: {message.splitlines()[0]}") from None

    return wrapper


class Target(NamedTuple):
    """What `--gallery milvus:REST` names."""

    uri: str  # for pymilvus
    collection: str
    lite: Path | None  # the Milvus Lite database, None for a server
    index: str | None  # the `?index=` asked for, None when not given


def parse(rest: str) -> Target:
    """`--gallery milvus:REST` as a Target; UsageError (or FacerecError for a missing folder) naming it."""
    shown = f"--gallery milvus:{without_password(rest)}"
    uri, _, collection = rest.partition("#")
    collection = collection or DEFAULT_COLLECTION
    if not COLLECTION_NAME.fullmatch(collection):
        raise UsageError(
            f"{shown}: collection '{collection}' must be letters, digits and _, not starting with a digit"
        )
    uri, _, query = uri.partition("?")
    index = _index_option(query, shown)
    if re.match(r"https?://[^/\s]+", uri):
        return Target(uri, collection, None, index)
    if uri.endswith(".db") and "://" not in uri and len(uri) > 3:
        path = Path(os.path.abspath(uri))
        if not path.parent.is_dir():  # as SQLite does: a database file is made, its folder is not
            raise FacerecError(f"{shown}: the folder {path.parent} does not exist")
        return Target(str(path), collection, path, index)
    raise UsageError(f"{shown}: {USAGE}")


def _index_option(query: str, shown: str) -> str | None:
    """The `?index=TYPE` of a location (TYPE in any case), None without one."""
    if not query:
        return None
    try:
        options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise UsageError(f"{shown}: ?{query}: expected ?index=TYPE") from None
    unknown = sorted(set(options) - {"index"})
    if unknown:
        raise UsageError(f"{shown}: unknown option '{unknown[0]}' (the one option is ?index=TYPE)")
    index = options["index"].upper()
    if index not in INDEXES:
        raise UsageError(f"{shown}: ?index={options['index']}: expected one of {', '.join(INDEXES)}")
    return index


def index_record(kind: str) -> dict:
    """The index of type `kind` as recorded in `state` and given to Milvus."""
    return {"index_type": kind, "metric_type": "L2", "params": dict(INDEXES[kind])}


def search_params(index: dict, limit: int) -> dict:
    """The search settings of `index` for a search of `limit` rows."""
    kind = index["index_type"]
    if kind.startswith("HNSW"):
        return {"ef": max(MIN_EF, limit)}
    if kind.startswith("IVF"):
        return {"nprobe": NPROBE}
    return {}


def visible(generation: int) -> str:
    """The filter of the rows a reader of `generation` sees."""
    return f"generation <= {generation} and (retired == 0 or retired > {generation})"


def quoted(names: Sequence[str]) -> str:
    """A Milvus filter list of strings (JSON escaping is what its parser reads)."""
    return json.dumps(list(names), ensure_ascii=False)


class MilvusStore:
    """A gallery in Milvus (see the module docstring). Connects on first use, not when built."""

    fits_heads = False

    def __init__(self, location: str) -> None:
        self.location = f"milvus:{without_password(location)}"
        self.uri, self.collection, self.lite, self.index = parse(location)
        self.meta = f"{self.collection}_meta"
        self._client = None

    @property
    def uploads(self) -> Path | None:
        """Where `facerec serve` keeps the photos it enrolls (facerec.service.edits): inside a Lite
        database, a folder per collection (Lite reads only its own entries there); a server has none."""
        return self.lite / UPLOADS / self.collection if self.lite is not None else None

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
        pymilvus = _pymilvus()
        try:
            return pymilvus.MilvusClient(self.uri, timeout=CONNECT_TIMEOUT_S)
        except pymilvus.MilvusException as error:
            if self.lite is not None and _lite_busy(self.lite):
                raise GalleryBusy(
                    f"{self.location}: another process has this Milvus Lite database open (Lite serves "
                    "one process at a time; use a Milvus server to read while another writes)"
                ) from None
            message = _refusal(error) or (getattr(error, "message", None) or str(error)).splitlines()[0]
            raise FacerecError(f"{self.location}: cannot open Milvus: {without_password(message)}") from None

    def _exists(self) -> bool:
        """Whether a gallery may be here; a Lite database not made yet is not created by a reader."""
        if self.lite is not None and not self.lite.exists():
            return False
        return bool(self.client.has_collection(self.meta))

    @_milvus_errors
    def read(self) -> MilvusState | None:
        record = self._state_record()
        return None if record is None else MilvusState(self, record)

    @_milvus_errors
    def current(self) -> str | None:
        record = self._state_record()
        return None if record is None else version_name(record["generation"])

    def locked(self) -> contextlib.AbstractContextManager:
        if self.lite is not None:
            return _file_lock(self.lite.with_name(self.lite.name + ".lock"), self.location)
        return _Lease(self)

    @_milvus_errors
    def recover(self, full: bool = False) -> tuple[MilvusState | None, str | None]:
        """Undo what a killed commit left (rows of later generations, retirements after the current
        one) and finish what a commit killed after its state upsert left (rows retired by then). Milvus
        keeps its own files whole, so `full` checks nothing more."""
        if not self._exists():
            return None, None
        record = self._state_record()
        if record is not None:
            self._check_index(record)
        generation = record["generation"] if record else 0
        for name, key in ((self.collection, "id"), (self.meta, "key")):
            if self.client.has_collection(name):
                self._clean(name, key, generation)
        return (None if record is None else MilvusState(self, record)), None

    def _check_index(self, record: dict) -> None:
        """Refuse an `?index=` other than the gallery's (before a writer embeds anything)."""
        kind = record.get("index", index_record(DEFAULT_INDEX))["index_type"]
        if self.index is not None and self.index != kind:
            raise FacerecError(
                f"{self.location}: this gallery has a {kind} index; ?index={self.index} is for a new "
                "gallery (another #COLLECTION)"
            )

    def _clean(self, name: str, key: str, generation: int) -> None:
        client = self.client
        client.delete(name, filter=f"generation > {generation}")
        revived = self._rows(name, f"retired > {generation}", ["*"])
        for start in range(0, len(revived), BATCH):
            client.upsert(name, [{**row, "retired": 0} for row in revived[start : start + BATCH]])
        client.delete(name, filter=f"retired != 0 and retired <= {generation}")

    @_milvus_errors
    def commit(self, base: MilvusState | None, change: Change) -> str:
        record = self._state_record()
        committed = record["generation"] if record else 0
        if (base.generation if base else 0) != committed:
            raise FacerecError(
                f"{self.location}: the gallery changed under this write (generation {committed}); run again"
            )
        width = change.provenance.embedding_size
        index = record.get("index", index_record(DEFAULT_INDEX)) if record else self._new_index()
        self._prepare(width, index)
        generation = committed + 1
        removed = change.removed(len(base)) if base else []
        self._retire(self.collection, "id", [base.ids()[row] for row in removed], generation)
        next_id = record["next_id"] if record else 0
        self._insert(change.added, change.added_vectors(width), next_id, generation)
        self._write_skipped(base, change.skipped, generation)
        self._put(
            STATE,
            {
                "format": FORMAT,
                "generation": generation,
                "provenance": asdict(change.provenance),
                "written_at": now(),
                "faces": (len(base) if base else 0) - len(removed) + len(change.added),
                "next_id": next_id + len(change.added),
                "index": index,
                "people": change.people if change.people is not None else (base.people() if base else None),
            },
        )
        for name in (self.collection, self.meta):  # what no reader of `generation` sees any more
            self.client.delete(name, filter=f"retired != 0 and retired <= {generation}")
        # Sealed segments get their HNSW index; rows left in memory are scanned one by one (measured on
        # Lite: 1.1 s a query at 10k rows unflushed, 16 ms flushed).
        self.client.flush(self.collection)
        return version_name(generation)

    def _new_index(self) -> dict:
        return index_record(self.index or DEFAULT_INDEX)

    def _prepare(self, width: int, index: dict) -> None:
        """Make the collections when missing; refuse a face collection of another dimension."""
        self._make_meta()
        client = self.client
        if not client.has_collection(self.collection):
            client.create_collection(
                self.collection,
                schema=self._face_schema(width),
                index_params=self._index_params("vector", index),
                consistency_level="Strong",
            )
            return
        dimension = _dimension(client.describe_collection(self.collection), "vector", self.location)
        if dimension != width:
            raise FacerecError(
                f"{self.location}: collection '{self.collection}' holds {dimension}-dimensional vectors, "
                f"these models make {width}"
            )

    def _make_meta(self) -> None:
        client = self.client
        if client.has_collection(self.meta):
            self._load(self.meta)
            if client.has_collection(self.collection):
                self._load(self.collection)
            return
        pymilvus = _pymilvus()
        schema = client.create_schema(auto_id=False)
        schema.add_field("key", pymilvus.DataType.VARCHAR, is_primary=True, max_length=1024)
        schema.add_field("value", pymilvus.DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("generation", pymilvus.DataType.INT64)
        schema.add_field("retired", pymilvus.DataType.INT64)
        schema.add_field("dummy", pymilvus.DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        flat = {"index_type": "FLAT", "metric_type": "L2", "params": {}}
        client.create_collection(
            self.meta,
            schema=schema,
            index_params=self._index_params("dummy", flat),
            consistency_level="Strong",
        )

    def _face_schema(self, width: int):
        pymilvus = _pymilvus()
        types = pymilvus.DataType
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", types.INT64, is_primary=True)
        schema.add_field("vector", types.FLOAT_VECTOR, dim=width)
        schema.add_field("generation", types.INT64)
        schema.add_field("retired", types.INT64)
        for name in ("identity", "source", "box", "enrolled_at"):
            schema.add_field(name, types.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("sha256", types.VARCHAR, max_length=64)
        return schema

    def _index_params(self, field: str, index: dict):
        params = self.client.prepare_index_params()
        params.add_index(
            field, index_type=index["index_type"], metric_type=index["metric_type"], params=index["params"]
        )
        return params

    def _insert(self, entries: list[Entry], vectors: np.ndarray, first_id: int, generation: int) -> None:
        """Insert the added rows BATCH at a time (rows as Python lists cost ~40x their float32 size)."""
        for start in range(0, len(entries), BATCH):
            rows = [
                {
                    "id": first_id + number,
                    "vector": vectors[number].tolist(),
                    "generation": generation,
                    "retired": 0,
                    "identity": entry.identity,
                    "source": entry.source,
                    "sha256": entry.sha256,
                    "box": json.dumps(entry.box),
                    "enrolled_at": entry.enrolled_at,
                }
                for number, entry in enumerate(entries[start : start + BATCH], start)
            ]
            self.client.insert(self.collection, rows)

    def _retire(self, name: str, key: str, keys: list, generation: int) -> None:
        """Mark rows removed by `generation` (upserted whole: Milvus rewrites rows, not fields)."""
        for start in range(0, len(keys), BATCH):
            chosen = keys[start : start + BATCH]
            rows = self._rows(name, f"{key} in {quoted(chosen) if key == 'key' else chosen}", ["*"])
            if rows:
                self.client.upsert(name, [{**row, "retired": generation} for row in rows])

    def _write_skipped(self, base: MilvusState | None, skipped: list[Skipped], generation: int) -> None:
        """Skipped images as meta rows: those that stay keep their rows, the others are retired."""
        old = base.skipped_rows() if base else {}
        wanted = {(s.source, s.sha256, s.reason) for s in skipped}
        self._retire(self.meta, "key", [key for key, s in old.items() if s not in wanted], generation)
        kept = set(old.values())
        rows = [
            {
                "key": f"{SKIPPED}{generation}/{hashlib.sha256(s.source.encode()).hexdigest()}",
                "value": json.dumps(asdict(s), ensure_ascii=False),
                "generation": generation,
                "retired": 0,
                "dummy": [0.0, 0.0],
            }
            for s in skipped
            if (s.source, s.sha256, s.reason) not in kept
        ]
        for start in range(0, len(rows), BATCH):
            self.client.insert(self.meta, rows[start : start + BATCH])

    def _put(self, key: str, value: dict) -> None:
        """Write one meta record; a single upsert, which is what makes a commit current."""
        row = {"key": key, "value": json.dumps(value, ensure_ascii=False), "generation": 0, "retired": 0}
        self.client.upsert(self.meta, [{**row, "dummy": [0.0, 0.0]}])

    def _get(self, key: str) -> dict | None:
        found = self.client.query(self.meta, filter=f"key == {json.dumps(key)}", output_fields=["value"])
        return json.loads(found[0]["value"]) if found else None

    def _state_record(self) -> dict | None:
        """The `state` record, or None for a gallery never committed; one that is not facerec's, or
        of a newer format, is refused."""
        if not self._exists():
            return None
        self._load(self.meta)
        record = self._get(STATE)
        if record is not None and record.get("format") != FORMAT:
            raise FacerecError(
                f"{self.location}: gallery format {record.get('format')!r}, this facerec reads {FORMAT}"
            )
        if record is not None and self.client.has_collection(self.collection):
            self._load(self.collection)
        return record

    def _load(self, name: str) -> None:
        """Load collection `name` into memory unless it is (a load call waits in 0.3 s steps even then)."""
        from pymilvus.client.types import LoadState

        if self.client.get_load_state(name)["state"] != LoadState.Loaded:
            self.client.load_collection(name)

    def _rows(self, name: str, condition: str, fields: list[str]) -> list[dict]:
        """Every row of `name` matching `condition` (an iterator: a query's limit is 16384)."""
        iterator = self.client.query_iterator(name, batch_size=BATCH, filter=condition, output_fields=fields)
        rows = []
        try:
            while batch := iterator.next():
                rows.extend(dict(row) for row in batch)
        finally:
            iterator.close()
        return rows


class MilvusState:
    """One committed generation of a milvus gallery (facerec.contract.parts.GalleryState), read lazily."""

    head_name = "milvus"

    def __init__(self, store: MilvusStore, record: dict) -> None:
        self.store, self.location = store, store.location
        self.damage: dict[str, str] = {}  # Milvus keeps its own files whole
        self.generation = int(record["generation"])
        self.version = version_name(self.generation)
        self.provenance = Provenance.from_record(record["provenance"])
        self.head_options = record.get("index", index_record(DEFAULT_INDEX))
        self.written_at = record.get("written_at")
        self._count = int(record["faces"])
        self._people = record.get("people")
        self._entries: list[Entry] | None = None
        self._ids: list[int] | None = None

    def __len__(self) -> int:
        return self._count

    def people(self) -> dict | None:
        """The people record (facerec.people.book), kept in the state record with the generation."""
        return self._people

    def entries(self) -> list[Entry]:
        self._load()
        return list(self._entries)

    def ids(self) -> list[int]:
        """The primary keys of the rows, in row order."""
        self._load()
        return self._ids

    @_milvus_errors
    def _load(self) -> None:
        if self._entries is not None:
            return
        rows = sorted(
            self.store._rows(self.store.collection, visible(self.generation), ENTRY_FIELDS),
            key=lambda row: row["id"],
        )
        self._ids = [int(row["id"]) for row in rows]
        self._entries = [_entry(row) for row in rows]

    @_milvus_errors
    def skipped_rows(self) -> dict[str, tuple[str, str, str]]:
        """Meta key -> (source, sha256, reason) of this generation's skipped images."""
        condition = f'key like "{SKIPPED}%" and {visible(self.generation)}'
        rows = self.store._rows(self.store.meta, condition, ["key", "value"])
        found = {}
        for row in rows:
            value = json.loads(row["value"])
            found[row["key"]] = (value["source"], value["sha256"], value["reason"])
        return found

    def skipped(self) -> list[Skipped]:
        return [Skipped(*value) for value in sorted(self.skipped_rows().values())]

    def identities(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries():
            counts[entry.identity] = counts.get(entry.identity, 0) + 1
        return dict(sorted(counts.items()))

    @_milvus_errors
    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """The embeddings of `rows` (all, in row order, when None), fetched by primary key."""
        width = self.provenance.embedding_size
        ids = self.ids() if rows is None else [self.ids()[row] for row in rows]
        found: dict[int, Any] = {}
        for start in range(0, len(ids), BATCH):
            chosen = ids[start : start + BATCH]
            for row in self.store.client.get(self.store.collection, ids=chosen, output_fields=["vector"]):
                found[int(row["id"])] = row["vector"]
        if len(found) < len(set(ids)):
            raise FacerecError(f"{self.location}: {len(set(ids)) - len(found)} vectors missing from Milvus")
        matrix = np.asarray([found[key] for key in ids], dtype=np.float32)
        return matrix.reshape(len(ids), width)

    def load_head(self) -> MilvusSearch:
        values = self._count * self.provenance.embedding_size
        settled = _age_s(self.written_at) > SETTLED_S
        return MilvusSearch(self.store, self.generation, values, self.head_options, settled)

    def close(self) -> None:
        """Nothing to release: the client stays with the store (a head searches through it)."""


class MilvusSearch:
    """The store's own search of one generation, answering as a Head (see the module docstring)."""

    default_threshold = None  # a distance between embeddings: the weights' own (the provenance)

    def __init__(self, store: MilvusStore, generation: int, values: int, index: dict, settled: bool) -> None:
        self.store, self.location = store, store.location
        self.condition = visible(generation)
        self.index = index
        self.consistency = "Bounded" if settled else "Strong"
        # Milvus Lite scans segments it has not indexed yet with one (queries x rows x dim) array: 200
        # queries over 30k faces took 12 GB. A server is asked for every query at once.
        self.per_call = max(1, LITE_SCAN_VALUES // max(values, 1)) if store.lite is not None else None

    @_milvus_errors
    def search(self, queries, k: int) -> list[list[tuple[str, float]]]:
        matrix = _float32(queries)
        if k < 1 or not len(matrix):
            return [[] for _ in range(len(matrix))]
        limit = min(MAX_LIMIT, 4 * k)
        step = self.per_call or len(matrix)
        first = [
            hits
            for start in range(0, len(matrix), step)
            for hits in self._nearest(matrix[start : start + step], limit, self.condition)
        ]
        return [self._distinct(matrix[row], hits, k, limit) for row, hits in enumerate(first)]

    def _distinct(self, query: np.ndarray, hits: list, k: int, limit: int) -> list[tuple[str, float]]:
        """The first k identities among `hits`; when they hold fewer and did not run out, the nearest
        rows of the identities not found yet (all farther than `hits`), as wide as Milvus allows."""
        found: dict[str, float] = {}
        while True:
            for hit in hits:
                identity = hit["entity"]["identity"]
                if identity not in found:
                    found[identity] = float(np.sqrt(max(hit["distance"], 0.0)))
                    if len(found) == k:
                        return list(found.items())
            if len(hits) < limit:
                return list(found.items())
            limit = min(MAX_LIMIT, 4 * limit)
            condition = f"{self.condition} and identity not in {quoted(list(found))}"
            hits = self._nearest(query[None], limit, condition)[0]

    def _nearest(self, matrix: np.ndarray, limit: int, condition: str) -> list:
        return self.store.client.search(
            self.store.collection,
            data=[row.tolist() for row in matrix],
            limit=limit,
            filter=condition,
            output_fields=["identity"],
            search_params={"metric_type": "L2", "params": search_params(self.index, limit)},
            consistency_level=self.consistency,
        )


class _Lease:
    """The writer lock of a gallery on a Milvus server: the meta record `lease` (owner, expiry).

    A writer reads the lease; one held by another owner and not expired is GalleryBusy. It then writes
    its own, waits LEASE_SETTLE_S and reads it back: when two writers race, the later upsert wins and
    the other sees a foreign owner and gives up. A thread renews the lease every LEASE_S / 3; release
    deletes it. Limits: this is not a consensus lock. Two writers whose write-then-read windows overlap
    by more than LEASE_SETTLE_S could both believe they won; a writer paused (stopped, swapped out, cut
    off from the server) past LEASE_S loses the lease without knowing; expiry compares wall clocks of
    the writers' machines, so they must agree to within seconds. A writer killed (kill -9, a crash) on
    the machine of the next one is seen dead at once: the lease names its process and `machine` (the
    kernel's boot id and PID namespace), and a lease whose process is gone from the same machine is
    taken over; one killed elsewhere blocks others until its lease expires (up to LEASE_S). For
    facerec's use (an index run, a server's edits) that is enough; a deployment with many concurrent
    writers needs an external lock.
    """

    def __init__(self, store: MilvusStore) -> None:
        self.store = store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> None:
        self._acquire()
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with contextlib.suppress(Exception):  # an unreachable server: the lease expires by itself
            if self._holder() == self.owner:
                self.store.client.delete(self.store.meta, filter=f"key == {json.dumps(LEASE)}")

    @property
    def location(self) -> str:
        return self.store.location

    @_milvus_errors
    def _acquire(self) -> None:
        self.store._make_meta()
        held = self.store._get(LEASE)
        if (
            held is not None
            and held["owner"] != self.owner
            and held["expires"] > time.time()
            and not _abandoned(held)
        ):
            raise self._busy()
        self._write()
        time.sleep(LEASE_SETTLE_S)
        if self._holder() != self.owner:
            raise self._busy()

    def _busy(self) -> GalleryBusy:
        return GalleryBusy(f"{self.location}: another facerec process is writing this gallery")

    def _write(self) -> None:
        lease = {
            "owner": self.owner,
            "expires": time.time() + LEASE_S,
            "machine": _MACHINE,
            "pid": os.getpid(),
        }
        self.store._put(LEASE, lease)

    def _holder(self) -> str | None:
        held = self.store._get(LEASE)
        return None if held is None else held["owner"]

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            with contextlib.suppress(Exception):  # a failed renewal shows in the writer's own calls
                self._write()


def _this_machine() -> str | None:
    """The kernel boot and PID namespace of this process (None where /proc does not say): a process id
    recorded under the same ones is one this process can look up."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


_MACHINE = _this_machine()


def _abandoned(held: dict) -> bool:
    """Whether a lease was written on this machine by a process that is gone."""
    if _MACHINE is None or held.get("machine") != _MACHINE:
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return False


@contextlib.contextmanager
def _file_lock(path: Path, location: str) -> Iterator[None]:
    """An flock on `path` (made when missing, kept after): one writer of a Milvus Lite database."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GalleryBusy(f"{location}: another facerec process is writing this gallery") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _refusal(error: BaseException) -> str | None:
    """The server's own words when it refused the user or password: pymilvus reports any failed connect
    as "illegal connection params or server unavailable", the gRPC error it wraps says which."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        code = getattr(cause, "code", None)
        if callable(code) and getattr(code(), "name", None) == "UNAUTHENTICATED":
            return f"the server refused the user or password ({cause.details()})"
        cause = cause.__cause__ or cause.__context__
    return None


def _lite_busy(path: Path) -> bool:
    """Whether another process holds Milvus Lite's own lock of the database at `path`."""
    try:
        with open(path / "LOCK", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _age_s(written_at: str | None) -> float:
    """Seconds since the ISO time `written_at` (0 when unknown: such a generation counts as new)."""
    try:
        return time.time() - datetime.datetime.fromisoformat(written_at).timestamp()
    except (TypeError, ValueError):
        return 0.0


def version_name(generation: int) -> str:
    return f"g{generation:06d}"


def _entry(row: dict) -> Entry:
    box = json.loads(row["box"])
    return Entry(
        row["identity"],
        row["source"],
        row["sha256"],
        tuple(box) if box is not None else None,
        row["enrolled_at"],
    )


def _dimension(description: dict, field: str, location: str) -> int:
    for item in description["fields"]:
        if item["name"] == field:
            return int(item["params"]["dim"])
    name = description.get("collection_name")
    raise FacerecError(f"{location}: collection '{name}' has no field '{field}': not a facerec gallery")


def _float32(vectors) -> np.ndarray:
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


@hookimpl
def register_stores(register) -> None:
    register("milvus", MilvusStore)
