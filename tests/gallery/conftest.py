"""Fixtures of the gallery tests: real database servers, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """A real Milvus standalone server (the `milvus` package), as support.milvus_server describes: its URI
    http://root:Milvus@127.0.0.1:PORT. When it does not start, every test that needs it errors with the
    reason and the end of the server's log (pytest keeps the error: the start is tried once)."""
    from support.milvus_server import started

    with started(tmp_path_factory.mktemp("milvus-server")) as server:
        yield server.uri


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL 16 with pgvector (the `pgserver` package) on 127.0.0.1, as support.postgres
    describes: logins over TCP need the password; each test makes databases of its own in it."""
    from support.postgres import started

    with started() as server:
        yield server


@pytest.fixture
def postgres_gallery_uri(postgres_server, request) -> str:
    """`postgresql://facerec:PASSWORD@127.0.0.1:PORT/DB` of a new database (with pgvector) of this test's
    own; its galleries are in the default table `facerec`, or `URI#TABLE`."""
    import hashlib

    name = "g_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return postgres_server.database(name)
