"""Opening the feedback database: engine settings, schema creation and upgrades.

SQLite (the default) runs in WAL mode with `synchronous=FULL`, so a committed label survives a
killed process or a power cut, and with a busy timeout so concurrent writers wait instead of
failing. Write transactions start with `BEGIN IMMEDIATE`: they take the write lock up front,
which avoids the deadlock of two readers both trying to upgrade to writers. A new SQLite database
file is created readable by its owner only (0600; SQLite gives its -wal and -shm files the same
mode). PostgreSQL (`postgresql+psycopg://...`) waits at most the same busy timeout for a lock
(`lock_timeout`), so a blocked write fails like a busy SQLite one instead of hanging.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from tether.errors import ConfigError
from tether.storage.schema import SCHEMA_VERSION, Base, JobRow, LabelVersionRow, SchemaVersionRow, SessionRow

BUSY_TIMEOUT_MS = 30_000
POOL_SIZE = 20  # database servers: connections kept open, and as many more under load
WRITE_OPTION = "tether_write"


def make_engine(url: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """Creates an engine for a database URL, tuned for SQLite when the URL is SQLite.

    Args:
        url: SQLAlchemy URL, e.g. `sqlite:///feedback.db` or `postgresql://user@host/db`.
        busy_timeout_ms: SQLite only: how long a write waits for another connection's write lock.

    Returns:
        The engine. Use `engine.execution_options(tether_write=True)` for write transactions.

    Raises:
        ConfigError: the URL cannot be parsed or its driver is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"--db: cannot parse database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() != "sqlite":
        try:
            # as many connections as the app's request threads (40): a request never waits for a connection
            engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
        except NoSuchModuleError:
            raise ConfigError(f"--db: unknown database type {parsed.drivername!r} in {url!r}") from None
        except ImportError as exc:
            raise ConfigError(f"--db: driver for {parsed.drivername!r} is not installed ({exc})") from None
        if engine.dialect.name == "postgresql":
            _configure_postgresql(engine, busy_timeout_ms)
        return engine
    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory:
        _create_private_file(parsed)
    kwargs: dict[str, object] = {"connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}}
    if in_memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)
    _configure_sqlite(engine, wal=not in_memory, busy_timeout_ms=busy_timeout_ms)
    return engine


def _create_private_file(url: URL) -> None:
    """Creates a new SQLite database file with mode 0600 (owner only) before SQLite opens it.

    SQLite would create it with the umask's mode (usually 0644: readable by every user of the
    machine), and creates the -wal and -shm files with the mode of the database file. An existing
    file is left as it is.
    """
    path = url.database or ""
    if path.startswith("file:") or url.query.get("uri"):
        return  # a SQLite URI filename: SQLite parses it, and creates the file
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        pass  # a missing folder or no permission: SQLite reports it when it opens the file


def _configure_postgresql(engine: Engine, lock_timeout_ms: int) -> None:
    """Sets `lock_timeout` on every connection: a write waits that long for another's lock, then fails."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_conn.cursor()
        cursor.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(lock_timeout_ms)}ms",))
        cursor.close()
        dbapi_conn.commit()  # a setting made inside a transaction that is rolled back would be undone


def _configure_sqlite(engine: Engine, wal: bool, busy_timeout_ms: int) -> None:
    """Sets WAL, synchronous=FULL, foreign keys and explicit BEGIN handling on every connection."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# SQLite result codes (primary, the low byte) of faults that pass: another writer, a full disk, I/O.
SQLITE_FAULTS = {
    5: "the database is locked by another connection (SQLITE_BUSY)",
    6: "a table is locked (SQLITE_LOCKED)",
    8: "the database is read-only (SQLITE_READONLY)",
    10: "disk I/O error (SQLITE_IOERR)",
    13: "the database or the disk is full (SQLITE_FULL)",
    14: "the database file cannot be opened (SQLITE_CANTOPEN)",
}


# PostgreSQL SQLSTATEs (exact, or the class: the first two characters) of faults that pass.
POSTGRESQL_FAULTS = {
    "08": "the connection to the database was lost",
    "40001": "the transaction conflicted with a concurrent one (serialization failure)",
    "40P01": "the transaction deadlocked with a concurrent one",
    "53": "the database server is out of resources (disk full, memory, connections)",
    "55P03": "the database is locked by another connection (lock timeout)",
    "57014": "the statement was canceled (statement timeout)",
    "57": "the database server is shutting down or restarting",
    "58": "the database server had an I/O error",
    "25006": "the database is read-only",
}
# faults that a concurrent transaction caused: the same transaction is run again at once
RETRY_SQLSTATES = {"40001", "40P01"}


def transient_fault(exc: DBAPIError, dialect: str) -> str | None:
    """What went wrong when a database error is a fault of the moment rather than a bug, else None.

    SQLite: locked past the busy timeout, disk full, read-only, I/O errors (by result code).
    PostgreSQL: by SQLSTATE (connection lost, serialization failure, deadlock, disk full, lock
    timeout, server shutting down, I/O), and any error after which the connection is unusable.
    Other databases: every OperationalError.
    """
    if dialect == "sqlite":
        code = getattr(exc.orig, "sqlite_errorcode", None)
        return SQLITE_FAULTS.get(code & 0xFF) if isinstance(code, int) else None
    if dialect == "postgresql":
        state = getattr(exc.orig, "sqlstate", None)
        if isinstance(state, str):
            return POSTGRESQL_FAULTS.get(state) or POSTGRESQL_FAULTS.get(state[:2])
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            return POSTGRESQL_FAULTS["08"]  # no SQLSTATE: the client lost the server
        return None
    if isinstance(exc, OperationalError):
        return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "database unavailable"
    return None


def should_retry(exc: DBAPIError) -> bool:
    """True for a conflict with a concurrent transaction (PostgreSQL serialization failure, deadlock):
    the rolled-back transaction succeeds when run again."""
    return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 added the campaign's red-team model and the time spent per label."""
    conn.execute(text("ALTER TABLE campaigns ADD COLUMN model_path TEXT"))
    conn.execute(text("ALTER TABLE labels ADD COLUMN duration_ms INTEGER"))


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3 added gold items (with the campaign's gold rate), the fast-answer threshold, and
    campaign members (a new table, made by `create_all`; existing campaigns have none: open to all)."""
    conn.execute(text("ALTER TABLE campaigns ADD COLUMN gold_rate FLOAT NOT NULL DEFAULT 0.1"))
    conn.execute(text("ALTER TABLE campaigns ADD COLUMN fast_ms INTEGER"))
    conn.execute(text("ALTER TABLE items ADD COLUMN gold TEXT"))


def _migrate_3_to_4(conn: Connection) -> None:
    """Version 4 added the label history: earlier versions of revised labels."""
    LabelVersionRow.__table__.create(conn)


def _migrate_4_to_5(conn: Connection) -> None:
    """Version 5 added sign-in sessions (a table) and the index that finds expired assignments.

    Open assignments older than the assignment timeout expire on the first task handed out after
    the upgrade, and their items go back to the pool.
    """
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_assignments_status_created ON assignments (status, created_at)"))
    SessionRow.__table__.create(conn, checkfirst=True)


def _migrate_5_to_6(conn: Connection) -> None:
    """Version 6 added the jobs table: model work done by `tether label worker`."""
    JobRow.__table__.create(conn, checkfirst=True)


# MIGRATIONS[v] upgrades a database from version v to v + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4, 4: _migrate_4_to_5, 5: _migrate_5_to_6,
}


def read_schema_version(conn: Connection) -> int | None:
    """Returns the stored schema version, or None for a database without tether tables.

    Raises:
        ConfigError: the database has tables but no version (not a tether database).
    """
    tables = set(inspect(conn).get_table_names())
    if "schema_version" not in tables:
        if tables & {"campaigns", "items", "labels"}:
            raise ConfigError("database has feedback tables but no schema_version table: not a tether database")
        return None
    return conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar()


def ensure_schema(engine: Engine) -> int:
    """Creates the tables on a new database, or upgrades an older one in place, keeping its data.

    Args:
        engine: engine from `make_engine`.

    Returns:
        The schema version the database had before (0 for a new database).

    Raises:
        ConfigError: the database is newer than this code, or cannot be reached.
    """
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            found = read_schema_version(conn)
            if found is None:
                Base.metadata.create_all(conn)
                conn.execute(SchemaVersionRow.__table__.insert().values(version=SCHEMA_VERSION))
                return 0
            if found > SCHEMA_VERSION:
                raise ConfigError(
                    f"database schema version {found} is newer than this tether ({SCHEMA_VERSION}); upgrade tether"
                )
            for version in range(found, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
            if found < SCHEMA_VERSION:
                Base.metadata.create_all(conn)  # tables added by later versions, if any
                conn.execute(text("DELETE FROM schema_version"))
                conn.execute(SchemaVersionRow.__table__.insert().values(version=SCHEMA_VERSION))
            return found
    except OperationalError as exc:
        raise ConfigError(f"cannot open database {engine.url!r}: {exc.orig}") from None
