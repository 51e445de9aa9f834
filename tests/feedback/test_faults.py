"""Database faults while labeling: a locked database, a full disk, a lost connection answer 503, store nothing, and pass.

On SQLite: another connection holding the write lock past the busy timeout (SQLITE_BUSY), and
`PRAGMA max_page_count` capping the database at its current size on the app's connections, so a
write that needs a new page fails with SQLITE_FULL as on a full disk. On PostgreSQL: another
connection holding `LOCK TABLE ... IN EXCLUSIVE MODE` past the lock timeout, and the server ending
the app's connection in the middle of a write (as a restart or failover does).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import httpx
from sqlalchemy import create_engine, event, text

from conftest import ADMIN_TOKEN, bearer, make_campaign, make_labeler
from db_backends import db_url, is_sqlite  # noqa: F401  (db_url: every test on SQLite and PostgreSQL)
from tether.storage import FeedbackStore

SQLITE_DEFAULT_MAX_PAGES = 1073741823


@pytest.fixture
def store(db_url) -> Iterator[FeedbackStore]:
    """The app's store (for `client` and `live_server` too), waiting 0.2 s for a write lock instead of 30 s."""
    s = FeedbackStore(db_url, busy_timeout_ms=200)
    s.set_admin_token(ADMIN_TOKEN)
    yield s
    s.close()


@contextmanager
def write_locked(store: FeedbackStore) -> Iterator[None]:
    """Another process's connection holds the write lock (as a long import or a stuck writer would).

    PostgreSQL: the tables labeling writes are locked against writers (readers go on).
    """
    if not is_sqlite(store.url):
        engine = create_engine(store.url)
        with engine.connect() as conn, conn.begin() as tx:
            conn.execute(text("LOCK TABLE items, assignments, labels IN EXCLUSIVE MODE"))
            try:
                yield
            finally:
                tx.rollback()
        engine.dispose()
        return
    blocker = sqlite3.connect(store.engine.url.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@contextmanager
def connection_ended_in_write(store: FeedbackStore, statement_start: str) -> Iterator[None]:
    """PostgreSQL ends the app's connection just before its first statement starting with `statement_start`."""
    killer = create_engine(store.url)
    fired = {"done": False}

    def end_connection(_conn, cursor, statement, *_args) -> None:
        if not fired["done"] and statement.lstrip().upper().startswith(statement_start):
            fired["done"] = True
            with killer.connect() as conn:  # waits up to 5 s for the backend to be gone
                conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": cursor.connection.info.backend_pid})

    event.listen(store.engine, "before_cursor_execute", end_connection)
    try:
        yield
    finally:
        event.remove(store.engine, "before_cursor_execute", end_connection)
        killer.dispose()
    assert fired["done"], f"no statement started with {statement_start}"


@contextmanager
def deadlocks(store: FeedbackStore, statement_start: str, times: int) -> Iterator[list[int]]:
    """PostgreSQL reports a deadlock (SQLSTATE 40P01) instead of running the first `times` statements
    starting with `statement_start`; yields the list of those it failed (one entry each)."""
    failed: list[int] = []

    def deadlock(_conn, _cursor, statement, parameters, *_args):
        if len(failed) < times and statement.lstrip().upper().startswith(statement_start):
            failed.append(1)
            return "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected (test)' USING ERRCODE = 'deadlock_detected'; END $$", {}
        return statement, parameters

    event.listen(store.engine, "before_cursor_execute", deadlock, retval=True)
    try:
        yield failed
    finally:
        event.remove(store.engine, "before_cursor_execute", deadlock)


@contextmanager
def disk_full(store: FeedbackStore) -> Iterator[None]:
    """Every connection the app checks out may not grow the database beyond its current size."""
    full = {"on": True}

    def cap(dbapi_conn, _record, _proxy) -> None:
        cursor = dbapi_conn.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0] if full["on"] else SQLITE_DEFAULT_MAX_PAGES
        cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()

    event.listen(store.engine, "checkout", cap)
    try:
        yield
    finally:
        full["on"] = False  # connections checked out from now on get the default limit back
    # (the listener stays until the store closes, resetting the limit it set)


def _label(client, labeler, task, **answer):
    return client.post(f"/api/assignments/{task['assignment_id']}/label", json=answer, headers=labeler)


def _labels(client, admin, campaign) -> list[dict]:
    response = client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin)
    assert response.status_code == 200
    return response.json()


def test_locked_database_answers_503_and_stores_nothing(client, store, admin):
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()

    with write_locked(store):
        response = _label(client, ann, task, ranks=[1, 2, 3])
        assert response.status_code == 503
        assert "locked" in response.json()["detail"] and "nothing was stored" in response.json()["detail"]
        assert response.headers["retry-after"].isdigit()
        page = client.get(f"/label/{campaign['id']}", headers=ann)
        if is_sqlite(store.url):
            # the page a labeler opens needs SQLite's write lock (it may hand out a task): an HTML error page
            assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
            assert "locked" in page.text
        else:
            assert page.status_code == 200  # showing the open task writes nothing: PostgreSQL lets it through
        # reads go on (WAL): the label is not there
        assert _labels(client, admin, campaign) == []

    progress = client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()
    assert progress["n_labels"] == 0 and progress["labelers"][0]["n_open"] == 1
    # the same submission once the lock is gone: stored, counted once
    again = _label(client, ann, task, ranks=[1, 2, 3])
    assert again.status_code == 200 and again.json()["updated"] is False
    assert [lab["ranks"] for lab in _labels(client, admin, campaign)] == [[1, 2, 3]]


def test_disk_full_answers_503_and_stores_nothing(client, store, admin):
    if not is_sqlite(store.url):
        pytest.skip("a test cannot fill PostgreSQL's disk; a lost connection is tested instead")
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    first = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()
    acked = [_label(client, ann, first, ranks=[1, 2, 3]).json()["label_id"]]
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()
    # a long note does not fit in the pages the database has: it needs new (overflow) pages
    note = "the second answer reads better because" * 200

    with disk_full(store):
        response = _label(client, ann, task, ranks=[3, 2, 1], note=note)
        assert response.status_code == 503
        assert "full" in response.json()["detail"] and "nothing was stored" in response.json()["detail"]
        assert [lab["id"] for lab in _labels(client, admin, campaign)] == acked

    again = _label(client, ann, task, ranks=[3, 2, 1], note=note)
    assert again.status_code == 200
    acked.append(again.json()["label_id"])
    stored = _labels(client, admin, campaign)
    assert [lab["id"] for lab in stored] == acked  # every acknowledged label, and nothing else
    assert stored[1]["note"] == note
    assert client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()["n_labels"] == 2


def test_lost_connection_answers_503_stores_nothing_and_recovers(client, store, admin):
    if is_sqlite(store.url):
        pytest.skip("SQLite has no server connection to lose")
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()

    with connection_ended_in_write(store, "INSERT INTO LABELS"):
        response = _label(client, ann, task, ranks=[1, 2, 3])
    assert response.status_code == 503 and response.headers["retry-after"].isdigit()
    assert "connection" in response.json()["detail"] or "shutting down" in response.json()["detail"]
    assert "nothing was stored" in response.json()["detail"]
    assert _labels(client, admin, campaign) == []  # the pool replaced the lost connection
    progress = client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()
    assert progress["labelers"][0]["n_open"] == 1  # the assignment was not marked done either

    again = _label(client, ann, task, ranks=[1, 2, 3])
    assert again.status_code == 200
    assert [lab["ranks"] for lab in _labels(client, admin, campaign)] == [[1, 2, 3]]


def test_deadlocked_write_is_run_again(client, store, admin):
    """A transaction that lost a deadlock is rolled back and run again: the labeler sees one 200, the label
    is stored once; one that keeps losing gets a 503 after a few runs, with nothing stored."""
    if is_sqlite(store.url):
        pytest.skip("SQLite has a single writer: no deadlocks")
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()

    with deadlocks(store, "INSERT INTO LABELS", times=1000) as failed:
        response = _label(client, ann, task, ranks=[1, 2, 3])
    assert response.status_code == 503 and "deadlock" in response.json()["detail"]
    assert 1 < len(failed) < 10 and _labels(client, admin, campaign) == []

    with deadlocks(store, "INSERT INTO LABELS", times=2) as failed:
        response = _label(client, ann, task, ranks=[1, 2, 3])
    assert response.status_code == 200 and len(failed) == 2
    assert [lab["ranks"] for lab in _labels(client, admin, campaign)] == [[1, 2, 3]]


def test_labelers_retrying_through_lock_spells_lose_and_duplicate_nothing(live_server, admin):
    """4 labelers on a live server send every answer until it is acknowledged, while another process takes
    the write lock three times for 0.6 s: every answer is stored exactly once, none that got a 503."""
    url = live_server.url
    items = [{"prompt": f"p{i}", "completions": ["a", "b"]} for i in range(60)]
    campaign = httpx.post(url + "/api/campaigns", json={"name": "f", "kind": "rank", "items": items}, headers=admin).json()
    tokens = [httpx.post(url + "/api/labelers", json={"name": f"l{i}"}, headers=admin).json()["token"] for i in range(4)]
    acked: list[int] = []
    statuses: list[int] = []
    stop = threading.Event()

    def label(token: str) -> None:
        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
            while not stop.is_set():
                task = c.get(f"/api/campaigns/{campaign['id']}/next")
                statuses.append(task.status_code)
                if task.status_code == 204:
                    return
                if task.status_code != 200:
                    time.sleep(0.05)
                    continue
                while not stop.is_set():  # the same answer again until it is acknowledged
                    ack = c.post(f"/api/assignments/{task.json()['assignment_id']}/label", json={"ranks": [2, 1]})
                    statuses.append(ack.status_code)
                    if ack.status_code == 200:
                        acked.append(ack.json()["label_id"])
                        break
                    time.sleep(0.05)

    threads = [threading.Thread(target=label, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for _ in range(3):
        with write_locked(live_server.store):
            time.sleep(0.6)
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=60)
    stop.set()
    assert set(statuses) <= {200, 204, 503} and 503 in statuses
    stored = [lab.id for lab in live_server.store.list_labels(campaign["id"])]
    assert len(acked) == len(set(acked)) == len(items)
    assert sorted(stored) == sorted(acked)
