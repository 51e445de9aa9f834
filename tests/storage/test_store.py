"""Feedback store: items, assignment, labels, skip, progress, and the SQLite settings."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tether.storage import Conflict, FeedbackStore, LabelData, NewItem, NotFound, PairChoice, TaskKind


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    yield s
    s.close()


def _items(n: int, k: int = 3) -> list[NewItem]:
    return [NewItem(prompt=f"p{i}", completions=[f"c{i}.{j}" for j in range(k)], external_id=f"id{i}") for i in range(n)]


def test_sqlite_runs_in_wal_mode_with_full_sync(store):
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


def test_each_item_gets_at_most_labelers_per_item(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(3), labelers_per_item=2)
    labelers = [store.add_labeler(f"l{i}").labeler for i in range(3)]
    seen: dict[int, list[int]] = {}
    for labeler in labelers:
        while (task := store.next_task(campaign.id, labeler.id)) is not None:
            seen.setdefault(task.item.id, []).append(labeler.id)
            store.submit_label(task.assignment_id, labeler.id, LabelData(ranks=[1, 2, 3]))
    assert sorted(len(v) for v in seen.values()) == [2, 2, 2]
    assert all(len(set(v)) == len(v) for v in seen.values())
    progress = store.progress(campaign.id)
    assert (progress.n_labels, progress.n_target, progress.n_items_complete) == (6, 6, 3)


def test_open_task_is_returned_until_answered(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(2))
    lab = store.add_labeler("a").labeler
    first = store.next_task(campaign.id, lab.id)
    assert store.next_task(campaign.id, lab.id).assignment_id == first.assignment_id
    assert sorted(first.display_order) == [0, 1, 2]


def test_resubmission_replaces_the_label(store):
    campaign = store.create_campaign("c", TaskKind.PAIR, _items(1, k=2))
    lab = store.add_labeler("a").labeler
    task = store.next_task(campaign.id, lab.id)
    store.submit_label(task.assignment_id, lab.id, LabelData(choice=PairChoice.A))
    store.submit_label(task.assignment_id, lab.id, LabelData(choice=PairChoice.B))
    labels = store.list_labels(campaign.id)
    assert len(labels) == 1 and labels[0].data.choice == PairChoice.B


def test_skip_frees_the_slot_for_someone_else(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=1)
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    assert store.next_task(campaign.id, b.id) is None
    store.skip(task.assignment_id, a.id)
    assert store.next_task(campaign.id, a.id) is None  # never again for a
    assert store.next_task(campaign.id, b.id).item.id == task.item.id
    with pytest.raises(Conflict):
        store.submit_label(task.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))


def test_assignments_are_private(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1))
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    with pytest.raises(NotFound):
        store.submit_label(task.assignment_id, b.id, LabelData(ranks=[1, 2, 3]))


def test_closed_campaign_hands_out_nothing(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(2))
    lab = store.add_labeler("a").labeler
    store.update_campaign(campaign.id, status="closed")
    assert store.next_task(campaign.id, lab.id) is None


def test_names_are_unique(store):
    store.create_campaign("c", TaskKind.RANK, _items(1))
    with pytest.raises(Conflict):
        store.create_campaign("c", TaskKind.RANK, _items(1))
    store.add_labeler("a")
    with pytest.raises(Conflict):
        store.add_labeler("a")


def test_tokens_are_stored_hashed_and_checked(store):
    created = store.add_labeler("a")
    assert store.labeler_by_token(created.token).name == "a"
    assert store.labeler_by_token("wrong") is None
    with store.engine.connect() as conn:
        assert created.token not in str(conn.execute(text("SELECT token_hash FROM labelers")).all())
    store.set_labeler_active(created.labeler.id, False)
    assert store.labeler_by_token(created.token) is None
    store.set_admin_token("secret")
    assert store.is_admin_token("secret") and not store.is_admin_token("other")


def test_free_redteam_label_creates_an_item(store):
    campaign = store.create_campaign("rt", TaskKind.REDTEAM, [])
    lab = store.add_labeler("a").labeler
    store.add_free_label(campaign.id, lab.id, LabelData(prompt="attack", response="answer", harm=3))
    items = store.list_items(campaign.id)
    assert len(items) == 1 and items[0].prompt == "attack" and items[0].completions == ["answer"]
    assert store.list_labels(campaign.id)[0].data.harm == 3
