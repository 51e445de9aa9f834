"""Campaign members (who may label a campaign) and gold items (known answers mixed into queues)."""

from __future__ import annotations

import random

import pytest

from tether.storage import FeedbackStore, LabelData, NewItem, NotFound, PairChoice, TaskKind


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    yield s
    s.close()


def _items(n: int) -> list[NewItem]:
    return [NewItem(prompt=f"p{i}", completions=["a", "b", "c"], external_id=f"q{i}") for i in range(n)]


def _gold(n: int) -> list[NewItem]:
    return [NewItem(prompt=f"g{i}", completions=["right", "meh", "wrong"], external_id=f"g{i}", gold=LabelData(ranks=[1, 2, 3])) for i in range(n)]


def test_campaign_without_members_is_open_to_everyone(store):
    campaign = store.create_campaign("open", TaskKind.RANK, _items(1))
    ann = store.add_labeler("ann").labeler
    assert store.list_members(campaign.id) == [] and store.can_label(campaign.id, ann.id)
    assert [c.name for c in store.list_campaigns(labeler_id=ann.id)] == ["open"]
    assert store.next_task(campaign.id, ann.id) is not None


def test_members_only_see_and_label_their_campaign(store):
    ann, bob = store.add_labeler("ann").labeler, store.add_labeler("bob").labeler
    private = store.create_campaign("private", TaskKind.RANK, _items(2), members=["ann"])
    store.create_campaign("open", TaskKind.RANK, _items(1))
    assert [m.name for m in store.list_members(private.id)] == ["ann"]
    assert [c.name for c in store.list_campaigns(labeler_id=bob.id)] == ["open"]
    assert [c.name for c in store.list_campaigns(labeler_id=ann.id)] == ["open", "private"]
    assert len(store.list_campaigns()) == 2  # the admin sees everything
    with pytest.raises(NotFound, match="campaign"):
        store.next_task(private.id, bob.id)
    with pytest.raises(NotFound):
        store.add_free_label(private.id, bob.id, LabelData(prompt="x", response="y", harm=0))

    # a labeler taken off the campaign can no longer answer the task they hold; their labels stay
    task = store.next_task(private.id, ann.id)
    store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[1, 2, 3]))
    task = store.next_task(private.id, ann.id)
    store.add_members(private.id, ["bob"])
    store.remove_members(private.id, ["ann"])
    with pytest.raises(NotFound, match="assignment"):
        store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[1, 2, 3]))
    assert [lab.labeler_name for lab in store.list_labels(private.id)] == ["ann"]
    assert store.next_task(private.id, bob.id) is not None

    # no members left: open to all again
    store.remove_members(private.id, ["bob"])
    assert store.can_label(private.id, ann.id) and store.list_members(private.id) == []


def test_unknown_member_creates_nothing(store):
    with pytest.raises(NotFound, match="nobody"):
        store.create_campaign("c", TaskKind.RANK, _items(1), members=["nobody"])
    assert store.list_campaigns() == []
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1))
    with pytest.raises(NotFound, match="ghost"):
        store.add_members(campaign.id, ["ghost"])
    assert store.list_members(campaign.id) == []


def test_adding_a_member_twice_keeps_one(store):
    store.add_labeler("ann")
    twice = store.create_campaign("twice", TaskKind.RANK, _items(1), members=["ann", "ann"])
    assert [m.name for m in store.list_members(twice.id)] == ["ann"]
    campaign = store.create_campaign("c", TaskKind.RANK, _items(1))
    store.add_members(campaign.id, ["ann"])
    assert [m.name for m in store.add_members(campaign.id, ["ann", "ann"])] == ["ann"]


def test_gold_items_go_to_every_labeler_and_stay_out_of_progress(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(4) + _gold(2), labelers_per_item=1, gold_rate=1.0)
    assert campaign.gold_rate == 1.0
    labelers = [store.add_labeler(name).labeler for name in ("ann", "bob")]
    served: dict[str, list[str]] = {}
    for labeler in labelers:  # ann takes every ordinary item she can before bob starts
        for _ in range(3):
            task = store.next_task(campaign.id, labeler.id, rng=random.Random(0))
            served.setdefault(labeler.name, []).append(task.item.external_id)
            store.submit_label(task.assignment_id, labeler.id, LabelData(ranks=[1, 2, 3]))
    # gold first (rate 1), each labeler gets both gold items despite labelers_per_item=1
    assert sorted(served["ann"][:2]) == ["g0", "g1"] and sorted(served["bob"][:2]) == ["g0", "g1"]
    assert [i for i in served["ann"] + served["bob"] if i.startswith("q")] == ["q0", "q1"]
    [gold] = [item for item in store.list_items(campaign.id) if item.external_id == "g0"]
    assert gold.gold == LabelData(ranks=[1, 2, 3])
    progress = store.progress(campaign.id)
    assert (progress.n_items, progress.n_target, progress.n_labels) == (4, 4, 2)
    assert store.count_available(campaign.id, labelers[0].id) == 2  # q2, q3: gold is not counted


def test_gold_rate_zero_never_serves_gold_and_gold_waits_for_ordinary_items(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(3) + _gold(2), gold_rate=0.0)
    ann = store.add_labeler("ann").labeler
    seen = []
    while (task := store.next_task(campaign.id, ann.id)) is not None:
        seen.append(task.item.external_id)
        store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[1, 2, 3]))
    assert seen == ["q0", "q1", "q2"]
    # with rate 1 but no ordinary item left, no gold is handed out either: the queue is done
    store.update_campaign(campaign.id, gold_rate=1.0)
    assert store.next_task(campaign.id, ann.id) is None


def test_pair_gold_round_trips_its_choice(store):
    item = NewItem(prompt="p", completions=["x", "y"], gold=LabelData(choice=PairChoice.B))
    campaign = store.create_campaign("c", TaskKind.PAIR, [item], fast_ms=1500)
    assert campaign.fast_ms == 1500
    assert store.list_items(campaign.id)[0].gold == LabelData(choice=PairChoice.B)
    assert store.update_campaign(campaign.id, fast_ms=0).fast_ms is None


def test_remaining_falls_by_one_per_task_whether_gold_or_not(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(3) + _gold(2), gold_rate=1.0)
    ann = store.add_labeler("ann").labeler
    assert store.count_available(campaign.id, ann.id) == 5
    shown = []
    while (task := store.next_task(campaign.id, ann.id)) is not None:
        shown.append((task.item.external_id[0], store.count_available(campaign.id, ann.id)))
        store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[1, 2, 3]))
    assert shown == [("g", 5), ("g", 4), ("q", 3), ("q", 2), ("q", 1)]
    assert store.count_available(campaign.id, ann.id) == 0


def test_skipped_gold_item_does_not_come_back_and_stays_out_of_the_queue(store):
    campaign = store.create_campaign("c", TaskKind.RANK, _items(2) + _gold(1), labelers_per_item=1, gold_rate=1.0)
    ann, bob = store.add_labeler("ann").labeler, store.add_labeler("bob").labeler
    task = store.next_task(campaign.id, ann.id)
    assert task.item.external_id == "g0"
    store.skip(task.assignment_id, ann.id)
    assert store.next_task(campaign.id, ann.id).item.external_id == "q0"
    assert store.next_task(campaign.id, bob.id).item.external_id == "g0"  # still there for the others
    assert store.count_available(campaign.id, bob.id) == 2  # the open gold item and q1
