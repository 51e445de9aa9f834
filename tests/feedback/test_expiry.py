"""Assignments that nobody answers expire: the item goes to someone else, the late labeler is told (API)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from clock import clock  # noqa: F401 (fixture)
from conftest import ADMIN_TOKEN, make_campaign, make_labeler
from tether.feedback.app import create_app
from tether.storage import FeedbackStore

ITEM = [{"prompt": "p", "completions": ["a", "b"], "id": "only"}]


@pytest.fixture
def client(db_url, clock) -> Iterator[TestClient]:
    """The app on a store whose assignments expire after 10 minutes of the test's clock."""
    store = FeedbackStore(db_url, assignment_timeout_s=600, clock=clock)
    store.set_admin_token(ADMIN_TOKEN)
    with TestClient(create_app(store)) as c:
        yield c
    store.close()


def _next(client, labeler, campaign):
    return client.get(f"/api/campaigns/{campaign['id']}/next", headers=labeler)


def _label(client, labeler, task):
    return client.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": [1, 2]}, headers=labeler)


def test_late_labeler_gets_a_clear_409_when_the_item_went_to_someone_else(client, admin, clock):
    campaign = make_campaign(client, admin, items=ITEM, labelers_per_item=1)
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    task = _next(client, ann, campaign).json()
    assert _next(client, bob, campaign).status_code == 204
    clock.advance(11)
    given = _next(client, bob, campaign)
    assert given.status_code == 200 and given.json()["item_id"] == "only"

    late = _label(client, ann, task)
    assert late.status_code == 409
    assert "10 minutes" in late.json()["detail"] and "not stored" in late.json()["detail"]
    assert _next(client, ann, campaign).status_code == 204  # nothing left for ann
    assert _label(client, bob, given.json()).status_code == 200
    labels = client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json()
    assert [lab["labeler"] for lab in labels] == ["bob"]


def test_late_answer_is_accepted_when_nobody_took_the_item(client, admin, clock):
    campaign = make_campaign(client, admin, items=ITEM, labelers_per_item=1)
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    task = _next(client, ann, campaign).json()
    clock.advance(11)
    given = _next(client, bob, campaign)  # expires ann's assignment, takes the item...
    assert given.status_code == 200
    assert client.post(f"/api/assignments/{given.json()['assignment_id']}/skip", headers=bob).status_code == 204
    # ... and gives it back: the item has a free place again, so ann's late answer is stored
    assert _label(client, ann, task).status_code == 200
    progress = client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()
    assert (progress["n_labels"], progress["n_items_complete"]) == (1, 1)
