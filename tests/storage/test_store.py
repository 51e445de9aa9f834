"""Feedback store: items, assignment, labels, skip, progress, and the SQLite settings."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from sqlalchemy import text, update

from tether.storage import (
    Campaign, Conflict, FeedbackStore, InvalidValue, Item, Label, LabelData, Labeler, LabelVersion, NewItem, NotFound, PairChoice, TaskKind,
)  # fmt: skip
from tether.storage.schema import CampaignRow, ItemRow, LabelerRow, LabelRow, LabelVersionRow
from clock import clock  # noqa: F401 (fixture)
from db_backends import db_url, is_sqlite  # noqa: F401  (db_url: every test on SQLite and PostgreSQL)


@pytest.fixture
def store(db_url):
    s = FeedbackStore(db_url)
    yield s
    s.close()


def _items(n: int, k: int = 3) -> list[NewItem]:
    return [NewItem(prompt=f"p{i}", completions=[f"c{i}.{j}" for j in range(k)], external_id=f"id{i}") for i in range(n)]


def test_database_settings(store, db_url):
    """SQLite: WAL, synchronous=FULL, a busy timeout. PostgreSQL: a lock timeout as long as that busy timeout."""
    with store.engine.connect() as conn:
        if is_sqlite(db_url):
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
        else:
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "30s"


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


@pytest.fixture
def timed_store(db_url, clock):
    """A store whose assignments expire after 30 minutes of the test's clock."""
    s = FeedbackStore(db_url, assignment_timeout_s=30 * 60, clock=clock)
    yield s
    s.close()


def test_unanswered_assignment_expires_and_goes_to_someone_else(timed_store, clock):
    store = timed_store
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=1)
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    clock.advance(29)
    assert store.next_task(campaign.id, b.id) is None  # still a's
    clock.advance(2)
    given = store.next_task(campaign.id, b.id)
    assert given is not None and given.item.id == task.item.id
    # a comes back: the item's only place is b's now
    with pytest.raises(Conflict, match="30 minutes.*another labeler.*not stored"):
        store.submit_label(task.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))
    assert store.next_task(campaign.id, a.id) is None
    store.submit_label(given.assignment_id, b.id, LabelData(ranks=[3, 2, 1]))
    assert [(lab.labeler_name, lab.data.ranks) for lab in store.list_labels(campaign.id)] == [("b", [3, 2, 1])]


def test_late_answer_is_stored_while_the_item_needs_labels(timed_store, clock):
    store = timed_store
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=2)
    a, b, c = (store.add_labeler(n).labeler for n in "abc")
    late = store.next_task(campaign.id, a.id)
    clock.advance(31)
    assert store.next_task(campaign.id, b.id) is not None  # expires a's, takes one of the two places
    store.submit_label(late.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))  # a takes the other place
    assert store.next_task(campaign.id, c.id) is None  # two places, two labelers: full
    progress = store.progress(campaign.id)
    assert (progress.n_labels, sorted((p.labeler_name, p.n_labels, p.n_open) for p in progress.per_labeler)) == (
        1,
        [("a", 1, 0), ("b", 0, 1)],
    )


def test_returning_labeler_gets_their_expired_item_back(timed_store, clock):
    store = timed_store
    campaign = store.create_campaign("c", TaskKind.RANK, _items(2), labelers_per_item=1)
    a = store.add_labeler("a").labeler
    first = store.next_task(campaign.id, a.id)
    clock.advance(45)
    again = store.next_task(campaign.id, a.id)
    assert (again.assignment_id, again.item.id, again.display_order) == (first.assignment_id, first.item.id, first.display_order)
    clock.advance(29)  # handed out again 29 minutes ago: not expired
    b = store.add_labeler("b").labeler
    assert store.next_task(campaign.id, b.id).item.id != first.item.id


def test_skipping_an_expired_assignment_frees_no_second_place(timed_store, clock):
    store = timed_store
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=1)
    a, b, c = (store.add_labeler(n).labeler for n in "abc")
    task = store.next_task(campaign.id, a.id)
    clock.advance(31)
    assert store.next_task(campaign.id, b.id) is not None
    store.skip(task.assignment_id, a.id)
    assert store.next_task(campaign.id, c.id) is None  # b still holds the only place


def test_assignments_do_not_expire_without_a_timeout(db_url, clock):
    store = FeedbackStore(db_url, assignment_timeout_s=None, clock=clock)
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=1)
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    clock.advance(60 * 24 * 30)
    assert store.next_task(campaign.id, b.id) is None
    store.submit_label(task.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))
    store.close()


def test_sessions_end_on_sign_out_new_token_and_disabling(store):
    ann = store.add_labeler("ann").labeler
    first, second = store.create_session(ann.id), store.create_session(ann.id)
    admin = store.create_session(None)
    assert store.signed_in(first).labeler.name == "ann" and store.signed_in(admin).labeler is None
    store.end_session(first)
    assert store.signed_in(first) is None and store.signed_in(second) is not None
    assert store.end_sessions(ann.id) == 1 and store.signed_in(second) is None
    third = store.create_session(ann.id)
    store.rotate_token(ann.id)
    assert store.signed_in(third) is None
    fourth = store.create_session(ann.id)
    store.set_labeler_active(ann.id, False)
    assert store.signed_in(fourth) is None
    assert store.signed_in(admin) is not None
    store.set_admin_token("first")
    admin = store.create_session(None)
    store.set_admin_token("first")  # the same token again (a restart with --admin-token): still signed in
    assert store.signed_in(admin) is not None
    store.set_admin_token("second")
    assert store.signed_in(admin) is None
    with store.engine.connect() as conn:  # only hashes are stored
        assert fourth not in str(conn.execute(text("SELECT id_hash FROM sessions")).all())


def test_sessions_expire_after_their_max_age(db_url, clock):
    store = FeedbackStore(db_url, clock=clock)
    ann = store.add_labeler("ann").labeler
    session = store.create_session(ann.id)
    clock.advance(29 * 24 * 60)
    assert store.signed_in(session) is not None
    clock.advance(2 * 24 * 60)
    assert store.signed_in(session) is None
    store.close()


def test_values_the_database_refuses_are_invalid_not_errors(store, db_url):
    """PostgreSQL enforces column lengths and refuses NUL characters: InvalidValue, nothing stored (SQLite stores both)."""
    items = [NewItem(prompt="p", completions=["a", "b"], external_id="x" * 300), NewItem(prompt="with \x00 inside", completions=["a", "b"])]
    for number, item in enumerate(items):
        if is_sqlite(db_url):
            store.create_campaign(f"c{number}", TaskKind.RANK, [item])
        else:
            with pytest.raises(InvalidValue, match="nothing was stored"):
                store.create_campaign(f"c{number}", TaskKind.RANK, [item])
    assert len(store.list_campaigns()) == (2 if is_sqlite(db_url) else 0)


def test_candidates_taken_meanwhile_are_looked_up_again(store, monkeypatch):
    """On PostgreSQL concurrent requests can claim every candidate a request found before it claims one:
    the request looks again instead of answering "nothing left" (as it did under 50 clients)."""
    import tether.storage.store as store_module

    campaign = store.create_campaign("c", TaskKind.RANK, _items(store_module.CANDIDATES_PER_TRY + 5), labelers_per_item=1)
    lab = store.add_labeler("a").labeler
    real = store_module._candidates
    taken: list[int] = []

    def raced(s, campaign_id, labeler_id, per_item, **kwargs):
        found = real(s, campaign_id, labeler_id, per_item, **kwargs)
        if not taken:  # the first look: other requests take all of them before this one claims
            taken.extend(item.id for item in found)
            s.execute(update(ItemRow).where(ItemRow.id.in_(taken)).values(n_assigned=1))
        return found

    monkeypatch.setattr(store_module, "_candidates", raced)
    task = store.next_task(campaign.id, lab.id)
    assert len(taken) == store_module.CANDIDATES_PER_TRY
    assert task is not None and task.item.id not in taken


def test_items_locked_by_another_transaction_are_waited_for_not_reported_gone(store, db_url):
    """PostgreSQL: the first look passes over items other transactions hold (SKIP LOCKED); when that leaves
    nothing, the request looks again and waits for them, instead of answering "nothing left"."""
    if is_sqlite(db_url):
        pytest.skip("SQLite has one writer: no rows are held by another transaction")
    import threading

    from sqlalchemy import create_engine

    campaign = store.create_campaign("c", TaskKind.RANK, _items(3), labelers_per_item=1)
    lab = store.add_labeler("a").labeler
    other = create_engine(db_url)
    locked, release = threading.Event(), threading.Event()

    def hold_every_item() -> None:
        with other.connect() as conn, conn.begin():
            conn.execute(text("SELECT id FROM items FOR UPDATE"))
            locked.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold_every_item)
    holder.start()
    assert locked.wait(timeout=10)
    threading.Timer(0.3, release.set).start()
    task = store.next_task(campaign.id, lab.id)
    holder.join(timeout=10)
    other.dispose()
    assert task is not None and release.is_set()


def test_gold_assignments_do_not_expire(timed_store, clock):
    """A gold item has no places to give back (every labeler may get it): its open assignment stays open."""
    store = timed_store
    gold = NewItem(prompt="g", completions=["x", "y", "z"], gold=LabelData(ranks=[1, 2, 3]))
    campaign = store.create_campaign("c", TaskKind.RANK, [*_items(2), gold], labelers_per_item=1, gold_rate=1.0)
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    assert task.item.gold is not None
    clock.advance(31)
    assert store.next_task(campaign.id, b.id).item.gold is not None  # b gets the gold item too
    assert store.next_task(campaign.id, a.id).assignment_id == task.assignment_id  # still a's open task
    store.submit_label(task.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))
    assert store.next_task(campaign.id, a.id).item.gold is None


def test_an_item_taken_back_from_the_skipped_is_held_afresh(timed_store, clock):
    store = timed_store
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1), labelers_per_item=1)
    a, b = store.add_labeler("a").labeler, store.add_labeler("b").labeler
    task = store.next_task(campaign.id, a.id)
    clock.advance(40)
    store.skip(task.assignment_id, a.id)
    store.unskip(task.assignment_id, a.id)  # handed out 40 minutes ago, taken back now
    clock.advance(5)
    assert store.next_task(campaign.id, b.id) is None  # still a's: the timeout counts from the unskip
    store.submit_label(task.assignment_id, a.id, LabelData(ranks=[1, 2, 3]))
