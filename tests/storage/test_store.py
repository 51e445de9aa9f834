"""Feedback store: items, assignment, labels, skip, progress, and the SQLite settings."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from sqlalchemy import text

from tether.storage import Campaign, Conflict, FeedbackStore, Item, Label, LabelData, Labeler, LabelVersion, NewItem, NotFound, PairChoice, TaskKind
from tether.storage.schema import CampaignRow, ItemRow, LabelerRow, LabelRow, LabelVersionRow


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
    assert store.next_task(campaign.id, a.id) is None  # not again for a, unless a takes it back
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


def test_unskip_reopens_the_item_in_its_old_order(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(2), labelers_per_item=1)
    a = store.add_labeler("a").labeler
    task = store.next_task(campaign.id, a.id)
    store.skip(task.assignment_id, a.id)
    assert [t.assignment_id for t in store.list_skipped(campaign.id, a.id)] == [task.assignment_id]
    other = store.next_task(campaign.id, a.id)
    back = store.unskip(task.assignment_id, a.id)
    assert (back.item.id, back.display_order) == (task.item.id, task.display_order)
    assert store.next_task(campaign.id, a.id).assignment_id == task.assignment_id  # before the newer one
    assert store.count_available(campaign.id, a.id) == 2 and store.list_skipped(campaign.id, a.id) == []
    assert [i.n_assigned for i in _n_assigned(store)] == [1, 1]
    with pytest.raises(Conflict):
        store.unskip(task.assignment_id, a.id)  # open, not skipped
    with pytest.raises(NotFound):
        store.unskip(other.assignment_id, store.add_labeler("b").labeler.id)


def _n_assigned(store):
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT n_assigned FROM items ORDER BY id")).all()


def test_unskip_never_overfills_an_item(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=1)
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    store.skip(task.assignment_id, a.id)
    store.next_task(campaign.id, b.id)
    with pytest.raises(Conflict, match="other labelers"):
        store.unskip(task.assignment_id, a.id)
    assert [i.n_assigned for i in _n_assigned(store)] == [1]


def test_unskip_of_a_gold_item_takes_no_slot(store):
    gold = NewItem(prompt="g", completions=["x", "y", "z"], external_id="gold", gold=LabelData(ranks=[1, 2, 3]))
    campaign = store.create_campaign("c", TaskKind.RANK, [*_items(2), gold], labelers_per_item=1, gold_rate=1.0)
    a = store.add_labeler("a").labeler
    task = store.next_task(campaign.id, a.id)
    assert task.item.external_id == "gold"
    store.skip(task.assignment_id, a.id)
    assert store.unskip(task.assignment_id, a.id).item.external_id == "gold"
    assert store.next_task(campaign.id, a.id).assignment_id == task.assignment_id


def test_unskip_and_revising_need_membership(store):
    a = store.add_labeler("a").labeler
    store.add_labeler("b")
    campaign = store.create_campaign("c", TaskKind.RANK, _items(2), members=["a", "b"])
    task = store.next_task(campaign.id, a.id)
    store.skip(task.assignment_id, a.id)
    other = store.next_task(campaign.id, a.id)
    store.submit_label(other.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))
    assert [x.revisable for x in store.answered(a.id)] == [True]
    store.remove_members(campaign.id, ["a"])
    with pytest.raises(NotFound):
        store.unskip(task.assignment_id, a.id)
    assert [x.revisable for x in store.answered(a.id)] == [False]  # shown in the history, no longer revisable


def test_revisions_keep_every_earlier_version(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1))
    a = store.add_labeler("a").labeler
    task = store.next_task(campaign.id, a.id)
    answers = [LabelData(ranks=[1, 2, 3], note="one"), LabelData(ranks=[3, 2, 1], note="two"), LabelData(ranks=[2, 1, 3], note="three")]
    for data in answers:
        label = store.submit_label(task.assignment_id, a.id, data)
        store.submit_label(task.assignment_id, a.id, data)  # a retry adds no version
    assert [v.data for v in store.label_history(label.id)] == answers[:2]
    [answered] = store.answered(a.id)
    assert (answered.label.data, answered.n_versions, answered.task.display_order) == (answers[2], 2, task.display_order)
    assert store.answered(a.id, assignment_id=task.assignment_id + 100) == []
    assert [lab.data for lab in store.list_labels(campaign.id)] == [answers[2]]


def test_records_name_their_fields_after_columns():
    """The store copies rows into records by field name: every field is a column, or one the store adds."""
    added = {Campaign: {"n_items"}, Label: {"labeler_name", "data"}}
    added[LabelVersion] = {"data"}
    pairs = ((Campaign, CampaignRow), (Item, ItemRow), (Labeler, LabelerRow), (Label, LabelRow), (LabelData, LabelRow), (LabelData, LabelVersionRow), (LabelVersion, LabelVersionRow))
    for record, row in pairs:
        missing = {f.name for f in fields(record)} - set(row.__table__.columns.keys()) - added.get(record, set())
        assert not missing, f"{record.__name__} fields without a column: {missing}"


def _untimed(record):
    """The record without its timestamps (SQLite gives them back without the time zone)."""
    times = {f.name: None for f in fields(record) if f.name in ("created_at", "updated_at")}
    return replace(record, **times)


def test_records_come_back_as_stored(store):
    new = NewItem(prompt="p", completions=["a", "b"], external_id="x1", model="m/1", meta={"k": [1, 2]})
    campaign = store.create_campaign("c", TaskKind.RANK, [new], guidelines="g", labelers_per_item=2, model_path="models/rt")
    assert _untimed(store.get_campaign(campaign.id)) == _untimed(campaign)
    assert (campaign.name, campaign.kind, campaign.guidelines, campaign.labelers_per_item) == ("c", TaskKind.RANK, "g", 2)
    assert (campaign.status, campaign.model_path, campaign.n_items) == ("active", "models/rt", 1)
    [item] = store.list_items(campaign.id)
    assert (item.campaign_id, item.position, item.external_id, item.prompt) == (campaign.id, 0, "x1", "p")
    assert (item.completions, item.model, item.meta) == (["a", "b"], "m/1", {"k": [1, 2]})
    labeler = store.add_labeler("ann").labeler
    assert [_untimed(lab) for lab in store.list_labelers()] == [_untimed(labeler)] and labeler.active
    data = LabelData(
        ranks=[2, 1], unusable=[True, False], choice=PairChoice.TIE, thumb=1, harm=2,
        prompt="q", response="r", better_response="b", note="n", duration_ms=7,
    )  # fmt: skip
    task = store.next_task(campaign.id, labeler.id)
    label = store.submit_label(task.assignment_id, labeler.id, data)
    assert [_untimed(lab) for lab in store.list_labels(campaign.id)] == [_untimed(label)]
    assert (label.data, label.item_id, label.labeler_id, label.labeler_name) == (data, item.id, labeler.id, "ann")
