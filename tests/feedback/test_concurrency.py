"""Many clients on loopback at once: no label lost, none duplicated, no item over-assigned (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

from conftest import ADMIN_TOKEN, bearer
from db_backends import db_url  # noqa: F401  (the live server on SQLite and on PostgreSQL)


def _setup(url: str, n_items: int, per_item: int, n_labelers: int) -> tuple[int, list[dict[str, str]]]:
    admin = bearer(ADMIN_TOKEN)
    with httpx.Client(base_url=url, timeout=30) as c:
        items = [{"prompt": f"p{i}", "completions": ["a", "b", "c"]} for i in range(n_items)]
        campaign = c.post("/api/campaigns", json={"name": "load", "kind": "rank", "labelers_per_item": per_item, "items": items}, headers=admin).json()
        tokens = [c.post("/api/labelers", json={"name": f"l{i}"}, headers=admin).json()["token"] for i in range(n_labelers)]
    return campaign["id"], [bearer(t) for t in tokens]


def _work(url: str, campaign_id: int, headers: dict[str, str], acked: list[tuple[str, int]], errors: list[str]) -> None:
    """Labels until the queue is empty, recording every acknowledged (labeler, item)."""
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        name = c.get("/api/me").json()["name"]
        for _ in range(500):
            response = c.get(f"/api/campaigns/{campaign_id}/next")
            if response.status_code == 204:
                return
            if response.status_code != 200:
                errors.append(f"next {response.status_code} {response.text}")
                return
            task = response.json()
            ack = c.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": [1, 2, 3]})
            if ack.status_code != 200:
                errors.append(f"label {ack.status_code} {ack.text}")
                return
            acked.append((name, ack.json()["item_id"]))


def _run(url: str, campaign_id: int, labelers: list[dict[str, str]], clients_per_labeler: int) -> tuple[list, list]:
    acked: list[tuple[str, int]] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_work, args=(url, campaign_id, headers, acked, errors))
        for headers in labelers
        for _ in range(clients_per_labeler)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return acked, errors


def test_concurrent_labelers_lose_and_duplicate_nothing(live_server):
    n_items, per_item = 40, 3
    campaign_id, labelers = _setup(live_server.url, n_items, per_item, n_labelers=8)
    # two clients per labeler (two browser tabs): they share one queue and must not double-label
    acked, errors = _run(live_server.url, campaign_id, labelers, clients_per_labeler=2)
    assert errors == []
    labels = live_server.store.list_labels(campaign_id)
    stored = Counter((lab.labeler_name, lab.item_id) for lab in labels)
    assert all(n == 1 for n in stored.values()), "a labeler labeled an item twice"
    assert set(acked) <= set(stored), "an acknowledged label is missing"
    per_item_counts = Counter(lab.item_id for lab in labels)
    assert len(per_item_counts) == n_items and set(per_item_counts.values()) == {per_item}
    assert len(labels) == n_items * per_item


def test_single_labeler_items_are_never_handed_out_twice(live_server):
    campaign_id, labelers = _setup(live_server.url, n_items=60, per_item=1, n_labelers=12)
    acked, errors = _run(live_server.url, campaign_id, labelers, clients_per_labeler=1)
    assert errors == []
    items = [item for _, item in acked]
    assert len(items) == len(set(items)) == 60
    assert len(live_server.store.list_labels(campaign_id)) == 60
