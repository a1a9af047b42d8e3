"""The `postgresql` store: a gallery in PostgreSQL tables with pgvector, searched by the server
(`fits_heads` False).

`--gallery postgresql://USER:PASSWORD@HOST:PORT/DB#TABLE` (also `postgres://`). What comes before `#` goes
to libpq as it is, so every form libpq reads works, and its environment with it: `postgresql:///faces`
(the local socket, the OS user), `?host=/run/postgresql`, `?sslmode=verify-full`, PGPASSWORD, PGUSER,
PGHOST, ~/.pgpass, PGSERVICE. Messages name the URI with its password as `***`. `#TABLE` (default
`facerec`) names the tables, in the connection's current schema (its search_path, which
`?options=-csearch_path%3DSCHEMA` sets):

| table | one row per | columns |
| --- | --- | --- |
| TABLE | enrolled face | id (row order), identity, source, sha256, box, enrolled_at, vector, G |
| TABLE_removed | face removed by a commit, until the next one | id, generation |
| TABLE_state | gallery (one row) | format, generation, next_id, faces, written_at, provenance, search, people |
| TABLE_skipped | image that enrolled nothing | source, sha256, reason, G, R |
| TABLE_persons | person of `facerec cluster` | person, name, G, R |
| TABLE_person_faces | clustered face with a person or an owner's choice | face_id, person, chosen, forgotten, G, R |

G (`generation`) is the commit that wrote a row, R (`retired`) the one that removed it (0 while live); a face's
removal is a row of TABLE_removed instead, because updating a face row would put its vector into the
HNSW graph again (an update of a full page is not a HOT update: every index gets the new row version).
`state.people` holds the rest of the people record (facerec.people.book), its format and `numbered`;
NULL before any `facerec cluster`.

Commits. A commit is one transaction: rows of generation G+1 inserted, removed ones marked (retired =
G+1, or TABLE_removed), rows removed before G+1 deleted, then the state row set to G+1, last. A writer
killed at any moment leaves nothing: the server rolls its transaction back. Why generations, then: a
GalleryState reads over many statements (entries now, vectors later, searches for as long as `serve`
holds it), and each of them sees only the rows of generation <= G not removed by G, so all of them see
state G although G+1 was committed between them. Rows removed by G+1 go when G+2 commits: a reader stays
exact until two commits pass it (`serve` reads the new state at its next request after one).

Search. `ORDER BY vector <-> q LIMIT L` through an HNSW index on L2 distance (m 16, ef_construction 64),
pgvector's Euclidean distance between unit vectors, which is facerec's distance as it is: up to k
distinct identities nearest first, as the `faiss` head's flat search answers. L = 4k (at most 1000,
pgvector's largest ef_search), ef_search max(40, L). pgvector 0.6 filters the index's candidates after
the index scan (no iterative scans before 0.8), so an answer short of k identities while some rows went
unseen (many faces of few people, faces removed by the last commit, dead rows not vacuumed yet) is
completed by an exact scan: the nearest face of each identity not found yet. The index is built in the
commit that makes the table, after its rows are in (a bulk build, much faster than row by row);
later commits insert into it.

One writer at a time: `pg_try_advisory_lock` on the writer's own connection, keyed by schema and table,
and the commit runs on that connection, so the lock and the transaction live and die together: a writer
killed or cut off loses its connection, and the server rolls back and frees the lock at once (no lease,
no clock; a writer on a machine that vanishes from the network holds it until the server's TCP
keepalive notices). A second writer is refused in one line (GalleryBusy; `serve` waits and retries).
Readers take no lock: any number of processes, `serve` replicas among them, read while one writes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

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

DEFAULT_TABLE = "facerec"
FORMAT = 1
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")  # + "_person_faces" stays within 63 bytes
SEARCH = {"index_type": "HNSW", "metric": "l2", "m": 16, "ef_construction": 64}
MIN_EF, MAX_EF = 40, 1000  # pgvector's default ef_search and its largest
MIN_PGVECTOR = (0, 5, 0)  # HNSW came in pgvector 0.5
CONNECT_TIMEOUT_S = 10
BUILD_MEMORY_MB = 1024  # maintenance_work_mem of the HNSW build, when the server's is lower
PEOPLE_TABLED = ("names", "faces", "chosen", "forgotten")  # the people record's parts kept in tables
USAGE = "expected postgresql://USER:PASSWORD@HOST:PORT/DB with an optional #TABLE"


def _psycopg():
    """psycopg 3, imported when a postgresql gallery is used (the extra `facerec[postgresql]`)."""
    try:
        import pgvector.psycopg  # noqa: F401  (the vector type's adapters)
        import psycopg
    except ImportError:
        raise FacerecError(
            "the postgresql store needs psycopg 3 and pgvector: pip install 'facerec[postgresql]'"
        ) from None
    return psycopg


def _one_line(error: Exception) -> str:
    """libpq's message without its hints: 'connection failed: ...' and the like."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return re.sub(r"\s+", " ", lines[0]) if lines else type(error).__name__


def _postgres_errors(method):
    """psycopg's exceptions (a server gone, a refused statement) as one line naming the gallery."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FacerecError:
            raise
        except Exception as error:
            if not isinstance(error, _psycopg().Error):
                raise
            raise FacerecError(f"{self.location}: PostgreSQL: {_one_line(error)}") from None

    return wrapper


def parse(scheme: str, rest: str) -> tuple[str, str]:
    """`--gallery SCHEME:REST` as (the libpq URI, the table)."""
    uri, _, table = rest.partition("#")
    shown = shown_location(f"{scheme}:{rest}")
    if not uri.startswith("//"):
        raise UsageError(f"--gallery {shown}: {USAGE}")
    table = table or DEFAULT_TABLE
    if not TABLE_NAME.fullmatch(table):
        raise UsageError(
            f"--gallery {shown}: table '{table}' must be letters, digits and _ (48 at most), "
            "not starting with a digit"
        )
    uri = f"{scheme}:{uri}"
    try:
        _psycopg().conninfo.conninfo_to_dict(uri)
    except _psycopg().ProgrammingError as error:
        raise UsageError(f"--gallery {shown}: {_one_line(error)}") from None
    return uri, table


def shown_location(location: str) -> str:
    """`location` for messages: its password, in the user part or as `password=`, as `***`."""
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", without_password(location))


class PostgresStore:
    """A gallery in PostgreSQL (see the module docstring). Connects on first use, not when built."""

    fits_heads = False

    def __init__(self, location: str, scheme: str = "postgresql") -> None:
        self.location = shown_location(f"{scheme}:{location}")
        self.uri, self.table = parse(scheme, location)
        self._reader = None
        self._writer = None
        self._reading = threading.Lock()  # one statement (and its ef_search) at a time on the reader
        self._ef: int | None = None

    def _sql(self, text: str):
        """`text` with {faces}, {removed}, {state}, {skipped}, {persons}, {person_faces}, {index} as
        identifiers."""
        sql = _psycopg().sql
        names = {
            "faces": self.table,
            "state": f"{self.table}_state",
            "skipped": f"{self.table}_skipped",
            "persons": f"{self.table}_persons",
            "person_faces": f"{self.table}_person_faces",
            "removed": f"{self.table}_removed",
            "index": f"{self.table}_vector",
        }
        return sql.SQL(text).format(**{key: sql.Identifier(name) for key, name in names.items()})

    def _connect(self):
        psycopg = _psycopg()
        given = psycopg.conninfo.conninfo_to_dict(self.uri)
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
            extra["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in given and "PGAPPNAME" not in os.environ:
            extra["application_name"] = "facerec"
        try:
            return psycopg.connect(self.uri, autocommit=True, **extra)
        except psycopg.Error as error:
            raise FacerecError(f"{self.location}: cannot connect: {_one_line(error)}") from None

    @property
    def reader(self):
        """The connection of reads (shared by threads; psycopg runs one statement at a time), opened
        again after a failure."""
        if self._reader is None or self._reader.closed:
            self._reader, self._ef = self._connect(), None
        return self._reader

    def close(self) -> None:
        """Close the reader's connection (the writer's closes with `locked`)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @_postgres_errors
    def read(self) -> PostgresState | None:
        row = self._state_row()
        return None if row is None else PostgresState(self, row)

    @_postgres_errors
    def current(self) -> str | None:
        row = self._state_row()
        return None if row is None else version_name(row["generation"])

    def _state_row(self) -> dict | None:
        """The state row, or None for a gallery never committed; one of a newer format is refused."""
        psycopg = _psycopg()
        with self._reading, self.reader.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            try:
                row = cursor.execute(self._sql("SELECT * FROM {state}")).fetchone()
            except psycopg.errors.UndefinedTable:
                return None
        if row is not None and row["format"] != FORMAT:
            raise FacerecError(
                f"{self.location}: gallery format {row['format']!r}, this facerec reads {FORMAT}"
            )
        return row

    def locked(self) -> contextlib.AbstractContextManager:
        return self._locked()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """A connection of the writer's own, holding the session's advisory lock (see the module
        docstring); closing it frees the lock."""
        connection = self._connect()
        try:
            if not self._try_lock(connection):
                raise GalleryBusy(f"{self.location}: another facerec process is writing this gallery")
            self._writer = connection
            yield
        finally:
            self._writer = None
            connection.close()

    @_postgres_errors
    def _try_lock(self, connection) -> bool:
        schema = "coalesce(current_schema(), '')"
        key = f"('x' || substr(md5('facerec:' || {schema} || '.' || %s), 1, 16))::bit(64)::bigint"
        return bool(connection.execute(f"SELECT pg_try_advisory_lock({key})", [self.table]).fetchone()[0])

    def recover(self, full: bool = False) -> tuple[PostgresState | None, str | None]:
        """The current state: a killed commit leaves nothing to undo (its transaction rolled back), and
        the server keeps its own files whole, so `full` checks nothing more."""
        return self.read(), None

    @_postgres_errors
    def commit(self, base: PostgresState | None, change: Change) -> str:
        if self._writer is None:
            raise FacerecError(f"{self.location}: a commit outside `locked()`")
        writer, width = self._writer, change.provenance.embedding_size
        with writer.transaction():
            self._require_pgvector(writer)  # before the cursor: it copies the connection's adapters
            return self._commit(writer, base, change, width)

    def _commit(self, writer, base: PostgresState | None, change: Change, width: int) -> str:
        with writer.cursor() as cursor:
            made = self._prepare(cursor, width)
            row = cursor.execute(self._sql("SELECT generation, next_id FROM {state}")).fetchone()
            committed, next_id = row if row else (0, 0)
            if (base.generation if base else 0) != committed:
                raise self._changed(committed)
            generation = committed + 1
            removed = change.removed(len(base)) if base else []
            if removed:
                ids = base.ids()
                cursor.execute(
                    self._sql("INSERT INTO {removed} (id, generation) SELECT unnest(%s::bigint[]), %s"),
                    [[ids[row] for row in removed], generation],
                )
            self._insert(cursor, change.added, change.added_vectors(width), next_id, generation)
            if made:
                self._build_index(cursor)
            self._write_skipped(cursor, base, change.skipped, generation)
            people = self._write_people(cursor, base, change.people, generation)
            self._forget_removed(cursor, generation)
            if not self._write_state(cursor, committed, change, next_id, len(base) if base else 0, people):
                raise self._changed(committed)
        return version_name(generation)

    def _forget_removed(self, cursor, generation: int) -> None:
        """Delete the rows removed before `generation`, which no reader of generation - 1 sees."""
        cursor.execute(
            self._sql("DELETE FROM {faces} f USING {removed} r WHERE r.id = f.id AND r.generation < %s"),
            [generation],
        )
        cursor.execute(self._sql("DELETE FROM {removed} WHERE generation < %s"), [generation])
        for table in ("skipped", "persons", "person_faces"):
            cursor.execute(
                self._sql(f"DELETE FROM {{{table}}} WHERE retired <> 0 AND retired < %s"), [generation]
            )

    def _changed(self, generation: int) -> FacerecError:
        return FacerecError(
            f"{self.location}: the gallery changed under this write (generation {generation}); run again"
        )

    def _prepare(self, cursor, width: int) -> bool:
        """The tables, made when missing (True when the face table is new); a face table of another
        dimension, or not facerec's, is refused."""
        found = cursor.execute("SELECT to_regclass(format('%%I', %s::text))", [self.table]).fetchone()[0]
        if found is not None:
            self._check_dimension(cursor, width)
            return False
        versioned = "generation bigint NOT NULL, retired bigint NOT NULL DEFAULT 0"
        for statement in (
            "CREATE TABLE {faces} (id bigint PRIMARY KEY, identity text NOT NULL, source text NOT NULL, "
            "sha256 text NOT NULL, box double precision[], enrolled_at text NOT NULL, "
            f"generation bigint NOT NULL, vector vector({int(width)}) NOT NULL)",
            # in the row, not in TOAST: floats do not compress, and a 512-d row fits a page 3 times
            "ALTER TABLE {faces} ALTER COLUMN vector SET STORAGE MAIN",
            "CREATE TABLE IF NOT EXISTS {removed} (id bigint PRIMARY KEY, generation bigint NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {state} (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), "
            "format integer NOT NULL, generation bigint NOT NULL, next_id bigint NOT NULL, "
            "faces bigint NOT NULL, written_at text, provenance jsonb NOT NULL, search jsonb NOT NULL, "
            "people jsonb)",
            "CREATE TABLE IF NOT EXISTS {skipped} (source text NOT NULL, sha256 text NOT NULL, "
            f"reason text NOT NULL, {versioned})",
            f"CREATE TABLE IF NOT EXISTS {{persons}} (person text NOT NULL, name text, {versioned})",
            "CREATE TABLE IF NOT EXISTS {person_faces} (face_id text NOT NULL, person text, "
            f"chosen boolean NOT NULL, forgotten boolean NOT NULL, {versioned})",
        ):
            cursor.execute(self._sql(statement))
        return True

    def _require_pgvector(self, connection) -> None:
        """The `vector` extension, made when missing (a superuser's act in pgvector 0.6), of a version
        with HNSW; its types registered on the writer's connection."""
        psycopg = _psycopg()
        version = connection.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        if version is None:
            try:
                connection.execute("CREATE EXTENSION vector")
            except psycopg.errors.InsufficientPrivilege:
                raise FacerecError(
                    f"{self.location}: this database has no pgvector and this role may not add it: a "
                    "superuser must run CREATE EXTENSION vector in it"
                ) from None
            version = connection.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
        numbers = tuple(int(part) for part in re.findall(r"\d+", version[0])[:3])
        if numbers < MIN_PGVECTOR:
            raise FacerecError(f"{self.location}: pgvector {version[0]} has no HNSW index; 0.5 or newer has")
        _with_vectors(connection)

    def _check_dimension(self, cursor, width: int) -> None:
        found = cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(format('%%I', %s::text)) AND attname = 'vector' "
            "AND NOT attisdropped",
            [self.table],
        ).fetchone()
        match = re.fullmatch(r"vector\((\d+)\)", found[0]) if found else None
        if match is None:
            raise FacerecError(
                f"{self.location}: table '{self.table}' has no vector column: not a facerec gallery"
            )
        if int(match.group(1)) != width:
            raise FacerecError(
                f"{self.location}: table '{self.table}' holds {match.group(1)}-dimensional vectors, "
                f"these models make {width}"
            )

    def _insert(
        self, cursor, entries: list[Entry], vectors: np.ndarray, first_id: int, generation: int
    ) -> None:
        """COPY the added rows in PostgreSQL's binary format (vectors as pgvector's binary)."""
        if not entries:
            return
        columns = "id, identity, source, sha256, box, enrolled_at, generation, vector"
        with cursor.copy(self._sql(f"COPY {{faces}} ({columns}) FROM STDIN (FORMAT BINARY)")) as copy:
            copy.set_types(["int8", "text", "text", "text", "float8[]", "text", "int8", "vector"])
            for number, (entry, vector) in enumerate(zip(entries, vectors, strict=True), first_id):
                box = list(entry.box) if entry.box is not None else None
                copy.write_row(
                    (
                        number,
                        entry.identity,
                        entry.source,
                        entry.sha256,
                        box,
                        entry.enrolled_at,
                        generation,
                        vector,
                    )
                )

    def _build_index(self, cursor) -> None:
        """The HNSW index of a new table, built on the rows just copied, with memory enough for its graph
        (pgvector warns, and slows down many times, when the graph outgrows maintenance_work_mem)."""
        memory = cursor.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0]
        if memory < BUILD_MEMORY_MB * 2**20:
            cursor.execute(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY_MB}MB'")
        options = f"m = {SEARCH['m']}, ef_construction = {SEARCH['ef_construction']}"
        cursor.execute(
            self._sql(
                f"CREATE INDEX {{index}} ON {{faces}} USING hnsw (vector vector_l2_ops) WITH ({options})"
            )
        )

    def _write_skipped(
        self, cursor, base: PostgresState | None, skipped: list[Skipped], generation: int
    ) -> None:
        old = {s.source: (s.sha256, s.reason) for s in base.skipped()} if base else {}
        new = {s.source: (s.sha256, s.reason) for s in skipped}
        self._sync(cursor, "skipped", ("source", "sha256", "reason"), old, new, generation)

    def _write_people(self, cursor, base: PostgresState | None, record: dict | None, generation: int):
        """The people tables brought to `record` (None: the base's, untouched); what the state row keeps
        of it (its parts not in tables)."""
        if record is None:
            return base.people_extra if base else None
        before = base.people() if base else None
        if record != before:
            old_persons, old_faces = _people_rows(before)
            persons, faces = _people_rows(record)
            self._sync(cursor, "persons", ("person", "name"), old_persons, persons, generation)
            columns = ("face_id", "person", "chosen", "forgotten")
            self._sync(cursor, "person_faces", columns, old_faces, faces, generation)
        return {key: value for key, value in record.items() if key not in PEOPLE_TABLED}

    def _sync(
        self, cursor, table: str, columns: Sequence[str], old: dict, new: dict, generation: int
    ) -> None:
        """Bring the live rows of `table` from `old` to `new` (key -> the other columns): rows whose value
        changed or went are retired, the new values inserted."""
        gone = [key for key, value in old.items() if new.get(key) != value]
        if gone:
            cursor.execute(
                self._sql(
                    f"UPDATE {{{table}}} SET retired = %s WHERE retired = 0 AND {columns[0]} = ANY(%s)"
                ),
                [generation, gone],
            )
        fresh = [(key, *value, generation) for key, value in new.items() if old.get(key) != value]
        if fresh:
            with cursor.copy(
                self._sql(f"COPY {{{table}}} ({', '.join(columns)}, generation) FROM STDIN")
            ) as copy:
                for row in fresh:
                    copy.write_row(row)

    def _write_state(self, cursor, committed: int, change: Change, next_id: int, before: int, people) -> bool:
        """The one row whose update makes the next generation current when the transaction commits,
        written last; False when the row is no longer at `committed` (a writer that is not facerec)."""
        json = _psycopg().types.json.Jsonb
        faces = before - len(change.removed(before)) + len(change.added)
        values = [
            FORMAT,
            committed + 1,
            next_id + len(change.added),
            faces,
            now(),
            json(asdict(change.provenance)),
            json(SEARCH),
            None if people is None else json(people),
        ]
        cursor.execute(
            self._sql(
                "INSERT INTO {state} "
                "(format, generation, next_id, faces, written_at, provenance, search, people) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (only_row) DO UPDATE SET "
                "format = EXCLUDED.format, generation = EXCLUDED.generation, next_id = EXCLUDED.next_id, "
                "faces = EXCLUDED.faces, written_at = EXCLUDED.written_at, provenance = EXCLUDED.provenance, "
                "search = EXCLUDED.search, people = EXCLUDED.people WHERE {state}.generation = %s"
            ),
            [*values, committed],
        )
        return cursor.rowcount == 1

    def _rows(
        self, text: str, params: Mapping[str, Any] | Sequence[Any], vectors: bool = False
    ) -> list[tuple]:
        """Every row a read statement answers, on the reader's connection, in binary (`vectors`: with
        pgvector's adapters)."""
        with self._reading:
            reader = _with_vectors(self.reader) if vectors else self.reader
            with reader.cursor(binary=True) as cursor:
                return cursor.execute(self._sql(text), params).fetchall()

    def _nearest(self, statement: str, params: Mapping[str, Any], ef: int) -> list[tuple]:
        """A search statement with hnsw.ef_search at `ef` (set on the reader's session when it differs)."""
        with self._reading:
            reader = _with_vectors(self.reader)
            if self._ef != ef:
                reader.execute(f"SET hnsw.ef_search = {int(ef)}")
                self._ef = ef
            return reader.execute(self._sql(statement), params).fetchall()


def _with_vectors(connection):
    """`connection` with pgvector's adapters (numpy arrays as `vector`, `vector` as pgvector.Vector)."""
    if connection.adapters.types.get("vector") is None:
        from pgvector.psycopg import register_vector

        register_vector(connection)
    return connection


def _people_rows(record: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """A people record's tabled parts as rows: person -> (name,), face -> (person, chosen, forgotten)."""
    if not record:
        return {}, {}
    persons = {person: (name,) for person, name in record["names"].items()}
    assigned, chosen, forgotten = record["faces"], set(record["chosen"]), set(record["forgotten"])
    faces = {
        face: (assigned.get(face), face in chosen, face in forgotten)
        for face in sorted(set(assigned) | chosen | forgotten)
    }
    return persons, faces


# The rows a reader of generation %(g)s sees: of the faces, and of the other tables.
FACES = (
    "generation <= %(g)s "
    "AND NOT EXISTS (SELECT FROM {removed} r WHERE r.id = {faces}.id AND r.generation <= %(g)s)"
)
VISIBLE = "generation <= %(g)s AND (retired = 0 OR retired > %(g)s)"


class PostgresState:
    """One committed generation of a postgresql gallery (facerec.contract.parts.GalleryState), read lazily."""

    head_name = "postgresql"

    def __init__(self, store: PostgresStore, row: dict) -> None:
        self.store, self.location = store, store.location
        self.damage: dict[str, str] = {}  # the server keeps its own files whole
        self.generation = int(row["generation"])
        self.version = version_name(self.generation)
        self.provenance = Provenance.from_record(row["provenance"])
        self.head_options = row["search"]
        self.written_at = row["written_at"]
        self._count = int(row["faces"])
        self.people_extra = row["people"]  # the people record's parts not in tables
        self._people: dict | None = None
        self._entries: list[Entry] | None = None
        self._ids: list[int] | None = None

    def __len__(self) -> int:
        return self._count

    def entries(self) -> list[Entry]:
        self._load()
        return list(self._entries)

    def ids(self) -> list[int]:
        """The primary keys of the rows, in row order."""
        self._load()
        return self._ids

    @_postgres_errors
    def _load(self) -> None:
        if self._entries is not None:
            return
        rows = self.store._rows(
            f"SELECT id, identity, source, sha256, box, enrolled_at FROM {{faces}} WHERE {FACES} ORDER BY id",
            {"g": self.generation},
        )
        self._ids = [row[0] for row in rows]
        self._entries = [
            Entry(identity, source, sha256, tuple(box) if box is not None else None, enrolled)
            for _, identity, source, sha256, box, enrolled in rows
        ]

    @_postgres_errors
    def skipped(self) -> list[Skipped]:
        rows = self.store._rows(
            f"SELECT source, sha256, reason FROM {{skipped}} WHERE {VISIBLE}", {"g": self.generation}
        )
        return [Skipped(*row) for row in sorted(rows)]

    def identities(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries():
            counts[entry.identity] = counts.get(entry.identity, 0) + 1
        return dict(sorted(counts.items()))

    @_postgres_errors
    def people(self) -> dict | None:
        """The people record (facerec.people.book), from the people tables and the state row."""
        if self.people_extra is None or self._people is not None:
            return self._people
        where = {"g": self.generation}
        persons = self.store._rows(
            f"SELECT person, name FROM {{persons}} WHERE {VISIBLE} ORDER BY length(person), person", where
        )
        faces = self.store._rows(
            f"SELECT face_id, person, chosen, forgotten FROM {{person_faces}} WHERE {VISIBLE} "
            "ORDER BY face_id",
            where,
        )
        self._people = {
            **self.people_extra,
            "names": dict(persons),
            "faces": {face: person for face, person, _, _ in faces if person is not None},
            "chosen": [face for face, _, chosen, _ in faces if chosen],
            "forgotten": [face for face, _, _, forgotten in faces if forgotten],
        }
        return self._people

    @_postgres_errors
    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """The embeddings of `rows` (all, in row order, when None)."""
        width = self.provenance.embedding_size
        if rows is None:
            found = self.store._rows(
                f"SELECT vector FROM {{faces}} WHERE {FACES} ORDER BY id",
                {"g": self.generation},
                vectors=True,
            )
            vectors = [row[0].to_numpy() for row in found]
        else:
            ids = [self.ids()[row] for row in rows]
            found = dict(
                self.store._rows("SELECT id, vector FROM {faces} WHERE id = ANY(%s)", [ids], vectors=True)
            )
            if len(found) < len(set(ids)):
                raise FacerecError(
                    f"{self.location}: {len(set(ids)) - len(found)} vectors missing from PostgreSQL"
                )
            vectors = [found[key].to_numpy() for key in ids]
        return np.asarray(vectors, dtype=np.float32).reshape(len(vectors), width)

    def load_head(self) -> PostgresSearch:
        return PostgresSearch(self.store, self.generation, self._count)

    def close(self) -> None:
        """Nothing to release: the connection stays with the store (a head searches through it)."""


class PostgresSearch:
    """The store's own search of one generation, answering as a Head (see the module docstring)."""

    default_threshold = None  # a distance between embeddings: the weights' own (the provenance)

    def __init__(self, store: PostgresStore, generation: int, count: int) -> None:
        self.store, self.location = store, store.location
        self.generation, self.count = generation, count

    @_postgres_errors
    def search(self, queries, k: int) -> list[list[tuple[str, float]]]:
        matrix = _float32(queries)
        if k < 1 or not len(matrix) or not self.count:
            return [[] for _ in range(len(matrix))]
        return [self._one(query, k) for query in matrix]

    def _one(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Up to k identities nearest first: the index's candidates, completed by an exact scan when they
        hold fewer than k identities and some rows went unseen."""
        limit = min(MAX_EF, 4 * k)
        params = {"q": query, "g": self.generation, "limit": limit}
        hits = self.store._nearest(
            f"SELECT identity, vector <-> %(q)b FROM {{faces}} WHERE {FACES} "
            "ORDER BY vector <-> %(q)b LIMIT %(limit)s",
            params,
            max(MIN_EF, limit),
        )
        found: dict[str, float] = {}
        for identity, distance in hits:
            found.setdefault(identity, float(distance))
        if len(found) < k and len(hits) < self.count:
            rest = self.store._nearest(
                f"SELECT identity, min(vector <-> %(q)b) AS distance FROM {{faces}} WHERE {FACES} "
                "AND NOT identity = ANY(%(found)s) GROUP BY identity ORDER BY distance LIMIT %(limit)s",
                {**params, "found": list(found), "limit": k - len(found)},
                max(MIN_EF, limit),
            )
            found.update((identity, float(distance)) for identity, distance in rest)
        return sorted(found.items(), key=lambda item: item[1])[:k]


def version_name(generation: int) -> str:
    return f"g{generation:06d}"


def _float32(vectors) -> np.ndarray:
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


@hookimpl
def register_stores(register) -> None:
    register("postgresql", PostgresStore)
    register("postgres", functools.partial(PostgresStore, scheme="postgres"))
