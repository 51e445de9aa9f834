"""Schema versions: a new database is stamped, an older one is upgraded with its data kept (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, inspect, text

from tether.errors import ConfigError
from tether.storage import FeedbackStore, JobQueue, LabelData, NewItem, TaskKind
from tether.storage.schema import SCHEMA_VERSION
from db_backends import db_url, is_sqlite  # noqa: F401  (db_url: every test on SQLite and PostgreSQL)

# The tables as schema version 1 created them (before campaigns.model_path and labels.duration_ms).
SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY);
CREATE TABLE settings (key VARCHAR(64) NOT NULL PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE campaigns (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE, kind VARCHAR(16) NOT NULL,
  guidelines TEXT NOT NULL, labelers_per_item INTEGER NOT NULL, status VARCHAR(16) NOT NULL, created_at DATETIME NOT NULL);
CREATE TABLE labelers (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE, token_hash VARCHAR(64) NOT NULL UNIQUE,
  active BOOLEAN NOT NULL, created_at DATETIME NOT NULL);
CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, campaign_id INTEGER NOT NULL REFERENCES campaigns (id), position INTEGER NOT NULL,
  external_id VARCHAR(200) NOT NULL, prompt TEXT NOT NULL, completions TEXT NOT NULL, model TEXT, meta TEXT, n_assigned INTEGER NOT NULL,
  created_by INTEGER REFERENCES labelers (id));
CREATE TABLE assignments (id INTEGER NOT NULL PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items (id),
  labeler_id INTEGER NOT NULL REFERENCES labelers (id), status VARCHAR(16) NOT NULL, display_order TEXT NOT NULL,
  created_at DATETIME NOT NULL, CONSTRAINT uq_assignment UNIQUE (item_id, labeler_id));
CREATE TABLE labels (id INTEGER NOT NULL PRIMARY KEY, campaign_id INTEGER NOT NULL REFERENCES campaigns (id),
  item_id INTEGER NOT NULL REFERENCES items (id), labeler_id INTEGER NOT NULL REFERENCES labelers (id), ranks TEXT, unusable TEXT,
  choice VARCHAR(16), thumb INTEGER, harm INTEGER, prompt TEXT, response TEXT, better_response TEXT, note TEXT NOT NULL,
  created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, CONSTRAINT uq_label UNIQUE (item_id, labeler_id));
INSERT INTO schema_version VALUES (1);
INSERT INTO campaigns VALUES (1, 'old', 'rank', 'be kind', 1, 'active', '2024-01-01 00:00:00');
INSERT INTO labelers VALUES (1, 'ann', 'x', TRUE, '2024-01-01 00:00:00');
INSERT INTO items VALUES (1, 1, 0, 'a', 'prompt', '["c0", "c1"]', NULL, NULL, 1, NULL);
INSERT INTO items VALUES (2, 1, 1, 'b', 'prompt 2', '["d0", "d1"]', NULL, NULL, 0, NULL);
INSERT INTO assignments VALUES (1, 1, 1, 'done', '[1, 0]', '2024-01-01 00:00:00');
INSERT INTO labels VALUES (1, 1, 1, 1, '[2, 1]', '[false, false]', NULL, NULL, NULL, NULL, NULL, NULL, 'fine',
  '2024-01-01 00:00:00', '2024-01-01 00:00:00');
"""


def _run_sql(url: str, script: str) -> None:
    """Runs SQL statements written for SQLite; on PostgreSQL with its types (and serial keys, as
    SQLAlchemy creates them there, moved past the rows inserted with explicit ids)."""
    if not is_sqlite(url):
        script = script.replace("DATETIME", "TIMESTAMP WITH TIME ZONE").replace("id INTEGER NOT NULL PRIMARY KEY", "id SERIAL PRIMARY KEY")
        for table in ("campaigns", "labelers", "items", "assignments", "labels"):
            if f"CREATE TABLE {table} (id" in script:
                script += f"\nSELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false);"
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(text(statement))
    engine.dispose()


def _scalar(url: str, sql: str):
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text(sql)).all()
    engine.dispose()
    return value


def test_new_database_is_stamped_with_the_current_version(db_url):
    store = FeedbackStore(db_url)
    assert store.previous_schema_version == 0
    store.close()
    assert _scalar(db_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_version_1_database_is_upgraded_keeping_its_data(db_url):
    _run_sql(db_url, SCHEMA_V1)
    store = FeedbackStore(db_url)
    assert store.previous_schema_version == 1
    campaign = store.campaign_by_name("old")
    assert campaign.guidelines == "be kind" and campaign.model_path is None and campaign.n_items == 2
    [label] = store.list_labels(campaign.id)
    assert label.data.ranks == [2, 1] and label.data.note == "fine" and label.labeler_name == "ann"
    # the upgraded database takes new data, new columns included
    task = store.next_task(campaign.id, 1)
    store.submit_label(task.assignment_id, 1, LabelData(ranks=[1, 2], duration_ms=1500))
    assert [lab.data.duration_ms for lab in store.list_labels(campaign.id)] == [None, 1500]
    store.update_campaign(campaign.id, model_path="models/sft")
    store.close()
    reopened = FeedbackStore(db_url)
    assert reopened.previous_schema_version == SCHEMA_VERSION
    assert reopened.get_campaign(campaign.id).model_path == "models/sft"
    assert reopened.create_campaign("new", TaskKind.THUMBS, []).name == "new"
    reopened.close()


def test_database_before_the_jobs_table_gets_it_keeping_its_data(tmp_path):
    """The jobs table came with the last schema version: a database one version older (the current tables
    without it) is upgraded in place, its rows kept."""
    path = tmp_path / "before-jobs.db"
    old = FeedbackStore(f"sqlite:///{path}")
    campaign = old.create_campaign("old", TaskKind.RANK, [NewItem(prompt="p", completions=["a", "b"])], guidelines="be kind")
    old.close()
    with sqlite3.connect(path) as conn:
        conn.executescript(f"DROP TABLE jobs; UPDATE schema_version SET version = {SCHEMA_VERSION - 1};")
    store = FeedbackStore(f"sqlite:///{path}")
    assert store.previous_schema_version == SCHEMA_VERSION - 1
    kept = store.campaign_by_name("old")
    assert (kept.id, kept.guidelines, kept.n_items) == (campaign.id, "be kind", 1)
    queue = JobQueue(store)
    job = queue.submit("sample", {"prompts": ["a"]})
    assert queue.claim("w1").id == job.id and queue.finish(job.id, "w1", {"ok": 1})
    assert queue.get(job.id).result == {"ok": 1}


def test_version_3_database_gets_sessions_and_expiring_assignments(db_url):
    """Version 5 added the sessions table and the index of open assignments by age: the upgrade keeps
    every row, and an assignment left open since before the upgrade expires and frees its item."""
    _run_sql(db_url, SCHEMA_V2 + SCHEMA_V3_FROM_V2 + """
INSERT INTO labelers VALUES (2, 'bob', 'y', TRUE, '2024-01-01 00:00:00');
INSERT INTO assignments VALUES (2, 2, 1, 'open', '[0, 1]', '2024-01-01 00:00:00');
UPDATE items SET n_assigned = 1 WHERE id = 2;
""")
    now = datetime(2024, 1, 1, 1, 0, tzinfo=timezone.utc)  # an hour after ann opened item 2: past 30 minutes
    store = FeedbackStore(db_url, clock=lambda: now)
    assert store.previous_schema_version == 3
    engine = create_engine(db_url)
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("assignments")}
    engine.dispose()
    assert "ix_assignments_status_created" in indexes
    campaign = store.campaign_by_name("old")
    assert [lab.data.note for lab in store.list_labels(campaign.id)] == ["fine"]
    assert [lab.name for lab in store.list_labelers()] == ["ann", "bob"]
    session = store.create_session(labeler_id=2)
    assert store.signed_in(session).labeler.name == "bob"
    task = store.next_task(campaign.id, 2)  # bob gets item 2: ann's assignment expired
    assert task is not None and task.item.external_id == "b"
    [ann] = [row for row in store.progress(campaign.id).per_labeler if row.labeler_name == "ann"]
    assert (ann.n_labels, ann.n_open) == (1, 0)
    store.close()


def test_newer_database_is_refused(db_url):
    _run_sql(db_url, f"CREATE TABLE schema_version (version INTEGER PRIMARY KEY); INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1});")
    with pytest.raises(ConfigError, match="newer"):
        FeedbackStore(db_url)


def test_foreign_database_is_refused(db_url):
    _run_sql(db_url, "CREATE TABLE campaigns (id INTEGER PRIMARY KEY);")
    with pytest.raises(ConfigError, match="not a tether database"):
        FeedbackStore(db_url)


def test_bad_url_is_a_config_error():
    with pytest.raises(ConfigError, match="--db"):
        FeedbackStore("not a url")


# The tables as schema version 2 created them: version 1 plus campaigns.model_path and labels.duration_ms.
SCHEMA_V2 = (
    SCHEMA_V1.replace("INSERT INTO schema_version VALUES (1);", "INSERT INTO schema_version VALUES (2);")
    .replace("status VARCHAR(16) NOT NULL, created_at DATETIME NOT NULL);", "status VARCHAR(16) NOT NULL, created_at DATETIME NOT NULL, model_path TEXT);")
    .replace("created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, CONSTRAINT uq_label", "created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, duration_ms INTEGER, CONSTRAINT uq_label")
    .replace("INSERT INTO campaigns VALUES (1, 'old', 'rank', 'be kind', 1, 'active', '2024-01-01 00:00:00');",
             "INSERT INTO campaigns VALUES (1, 'old', 'rank', 'be kind', 1, 'active', '2024-01-01 00:00:00', 'models/sft');")
    .replace("'2024-01-01 00:00:00', '2024-01-01 00:00:00');\n", "'2024-01-01 00:00:00', '2024-01-01 00:00:00', 4200);\n")
)


# What the version 2 to 3 upgrade added: gold items, the fast-answer threshold, campaign members.
SCHEMA_V3_FROM_V2 = """
ALTER TABLE campaigns ADD COLUMN gold_rate FLOAT NOT NULL DEFAULT 0.1;
ALTER TABLE campaigns ADD COLUMN fast_ms INTEGER;
ALTER TABLE items ADD COLUMN gold TEXT;
CREATE TABLE campaign_members (campaign_id INTEGER NOT NULL REFERENCES campaigns (id),
  labeler_id INTEGER NOT NULL REFERENCES labelers (id), PRIMARY KEY (campaign_id, labeler_id));
DELETE FROM schema_version;
INSERT INTO schema_version VALUES (3);
"""


def test_version_2_database_gets_members_and_gold_keeping_its_data(db_url):
    _run_sql(db_url, SCHEMA_V2)
    store = FeedbackStore(db_url)
    assert store.previous_schema_version == 2
    campaign = store.campaign_by_name("old")
    assert campaign.model_path == "models/sft" and campaign.gold_rate == 0.1 and campaign.fast_ms is None
    assert [item.gold for item in store.list_items(campaign.id)] == [None, None]
    [label] = store.list_labels(campaign.id)
    assert label.data.ranks == [2, 1] and label.data.duration_ms == 4200
    # the existing campaign stays open to every labeler, and takes members and gold items now
    assert store.list_members(campaign.id) == [] and store.can_label(campaign.id, 1)
    assert [c.name for c in store.list_campaigns(labeler_id=1)] == ["old"]
    store.add_members(campaign.id, ["ann"])
    store.add_items(campaign.id, [NewItem(prompt="g", completions=["x", "y"], gold=LabelData(ranks=[1, 2]))])
    store.close()
    reopened = FeedbackStore(db_url)
    assert reopened.previous_schema_version == SCHEMA_VERSION
    assert [m.name for m in reopened.list_members(campaign.id)] == ["ann"]
    assert reopened.list_items(campaign.id)[-1].gold == LabelData(ranks=[1, 2])
    reopened.close()


def test_version_3_database_gets_the_label_history_keeping_its_labels(tmp_path):
    path = tmp_path / "v3.db"
    store = FeedbackStore(f"sqlite:///{path}")
    campaign = store.create_campaign("old", TaskKind.RANK, [NewItem(prompt="p", completions=["a", "b"]), NewItem(prompt="q", completions=["c", "d"])])
    ann = store.add_labeler("ann").labeler
    task = store.next_task(campaign.id, ann.id)
    store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[2, 1], note="fine", duration_ms=900))
    store.close()
    with sqlite3.connect(path) as conn:  # the database as version 3 left it: no label history
        conn.executescript(  # and without what version 5 added
            "DROP TABLE label_history; DROP TABLE sessions; DROP INDEX ix_assignments_status_created; UPDATE schema_version SET version = 3;"
        )
    store = FeedbackStore(f"sqlite:///{path}")
    assert store.previous_schema_version == 3
    [label] = store.list_labels(campaign.id)
    assert (label.data.ranks, label.data.duration_ms, label.data.note) == ([2, 1], 900, "fine")
    assert store.label_history(label.id) == []
    # revising the old label moves its answer into the new table
    store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[1, 2], note="changed my mind"))
    [version] = store.label_history(label.id)
    assert (version.data.ranks, version.data.note, version.data.duration_ms) == ([2, 1], "fine", 900)
    assert [lab.data.ranks for lab in store.list_labels(campaign.id)] == [[1, 2]]
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone() == (2,)
        assert conn.execute("SELECT COUNT(*) FROM label_history").fetchone() == (1,)
