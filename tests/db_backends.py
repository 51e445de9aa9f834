"""The databases the storage tests run on: SQLite always, PostgreSQL where a server is reachable.

A test module runs on both by importing the fixture: `from db_backends import db_url`. Each
PostgreSQL test gets a fresh schema of the database in TETHER_TEST_POSTGRES_URL (default
`postgresql+psycopg://postgres@127.0.0.1:5432/test`), dropped afterwards; without a reachable
server the PostgreSQL tests are skipped, saying why. TETHER_TEST_POSTGRES_URL=off skips them.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_URL_ENV = "TETHER_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]


def postgres_url() -> str:
    """The PostgreSQL database the tests make their schemas in."""
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


@functools.cache
def postgres_problem() -> str | None:
    """Why the PostgreSQL tests cannot run here (None when they can); the server is probed once."""
    url = postgres_url()
    if url.lower() in ("", "0", "off", "no"):
        return f"PostgreSQL tests switched off ({POSTGRES_URL_ENV}={url!r})"
    try:
        import psycopg  # noqa: F401
        from sqlalchemy import create_engine, text
    except ImportError as exc:
        return f"PostgreSQL driver not installed ({exc}): pip install 'tether[feedback]'"
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means: no server for these tests
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return f"no PostgreSQL server reachable at {url} ({reason}); set {POSTGRES_URL_ENV} to one"
    return None


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """Yields a database URL whose connections work in a new, empty schema; drops it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"tether_test_{secrets.token_hex(6)}"
    base = make_url(postgres_url())
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # application_name marks this test's connections, so that leftovers (a killed server's) can be ended
    url = base.update_query_dict({"options": f"-csearch_path={schema}", "application_name": schema})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"), {"name": schema})
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def database_url(backend: str, tmp_path) -> Iterator[str]:
    """A fresh database of the backend: a SQLite file in tmp_path, or a PostgreSQL schema (skips without a server)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    problem = postgres_problem()
    if problem is not None:
        pytest.skip(problem)
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database: SQLite, then PostgreSQL."""
    with database_url(request.param, tmp_path) as url:
        yield url


def is_sqlite(url: str) -> bool:
    """True for a SQLite URL."""
    return url.startswith("sqlite")
