"""Answers that are easy to get wrong: ties must be confirmed, skips can be undone, answers revised."""

from __future__ import annotations

import json

from conftest import make_campaign, make_labeler, sign_in

ITEMS = [{"prompt": f"p{i}", "completions": [f"c{i}.{j}" for j in range(4)], "id": f"i{i}"} for i in range(3)]


def _next(client, labeler, campaign_id):
    response = client.get(f"/api/campaigns/{campaign_id}/next", headers=labeler)
    return response.json() if response.status_code == 200 else None


def _label(client, labeler, assignment_id, **answer):
    return client.post(f"/api/assignments/{assignment_id}/label", json=answer, headers=labeler)


def test_a_tie_is_refused_unless_confirmed(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS)
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    for ranks in ([1, 1, 1, 1], [1, 2, 2, 4], [2, 1, 2, 3]):
        refused = _label(client, ann, task["assignment_id"], ranks=ranks)
        assert refused.status_code == 422
        assert "ranks" in refused.json()["detail"] and "tie_intended" in refused.json()["detail"]
    assert client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json() == []
    assert _label(client, ann, task["assignment_id"], ranks=[1, 1, 1, 1], tie_intended=True).status_code == 200
    assert client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json()[0]["ranks"] == [1, 1, 1, 1]
    task = _next(client, ann, campaign["id"])
    # a strict ranking needs no flag, and the flag does not make a strict ranking wrong
    assert _label(client, ann, task["assignment_id"], ranks=[4, 3, 2, 1]).status_code == 200
    task = _next(client, ann, campaign["id"])
    assert _label(client, ann, task["assignment_id"], ranks=[4, 3, 2, 1], tie_intended=True).status_code == 200


def test_pair_tie_stays_an_explicit_choice(client, admin):
    campaign = make_campaign(client, admin, kind="pair", items=[{"prompt": "p", "completions": ["a", "b"]}])
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    assert _label(client, ann, task["assignment_id"], choice="tie").status_code == 200


def test_a_skip_can_be_undone(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS)
    ann = make_labeler(client, admin, "ann")
    first = _next(client, ann, campaign["id"])
    assert client.post(f"/api/assignments/{first['assignment_id']}/skip", headers=ann).status_code == 204
    second = _next(client, ann, campaign["id"])
    assert second["item_id"] != first["item_id"]
    skipped = client.get(f"/api/campaigns/{campaign['id']}/skipped", headers=ann).json()
    assert [(s["assignment_id"], s["item_id"]) for s in skipped] == [(first["assignment_id"], first["item_id"])]

    back = client.post(f"/api/assignments/{first['assignment_id']}/unskip", headers=ann)
    assert back.status_code == 200 and back.json()["item_id"] == first["item_id"]
    assert back.json()["completions"] == first["completions"]  # same display order as before
    # the item taken back is the current task again, the other one comes after it
    assert _next(client, ann, campaign["id"])["assignment_id"] == first["assignment_id"]
    assert client.get(f"/api/campaigns/{campaign['id']}/skipped", headers=ann).json() == []
    assert _label(client, ann, first["assignment_id"], ranks=[1, 2, 3, 4]).status_code == 200
    assert _next(client, ann, campaign["id"])["assignment_id"] == second["assignment_id"]
    # only skipped items can be taken back
    assert client.post(f"/api/assignments/{first['assignment_id']}/unskip", headers=ann).status_code == 409


def test_undo_is_refused_when_others_took_the_item(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS[:1])  # one labeler per item
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    task = _next(client, ann, campaign["id"])
    client.post(f"/api/assignments/{task['assignment_id']}/skip", headers=ann)
    assert _next(client, bob, campaign["id"])["item_id"] == task["item_id"]
    refused = client.post(f"/api/assignments/{task['assignment_id']}/unskip", headers=ann)
    assert refused.status_code == 409 and "other labelers" in refused.json()["detail"]
    progress = client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()
    assert {row["labeler"]: row["n_open"] for row in progress["labelers"]} == {"ann": 0, "bob": 1}


def test_others_cannot_undo_my_skip(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS)
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    task = _next(client, ann, campaign["id"])
    client.post(f"/api/assignments/{task['assignment_id']}/skip", headers=ann)
    assert client.post(f"/api/assignments/{task['assignment_id']}/unskip", headers=bob).status_code == 404


def test_revision_replaces_the_label_and_keeps_the_old_version(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS)
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    task = _next(client, ann, campaign["id"])
    aid = task["assignment_id"]
    assert _label(client, ann, aid, ranks=[1, 2, 3, 4], note="first").status_code == 200
    assert _label(client, ann, aid, ranks=[1, 2, 3, 4], note="first").status_code == 200  # a retry is no revision
    history = client.get("/api/history", headers=ann).json()
    assert [(h["assignment_id"], h["n_versions"], h["revisable"]) for h in history] == [(aid, 0, True)]

    assert _label(client, ann, aid, ranks=[4, 3, 2, 1], note="second thoughts").json()["updated"] is True
    one = client.get(f"/api/history/{aid}", headers=ann).json()
    assert one["label"]["ranks"] == [4, 3, 2, 1] and one["n_versions"] == 1
    assert [(v["ranks"], v["note"]) for v in one["versions"]] == [([1, 2, 3, 4], "first")]
    # the export and the admin's labels have the latest version only
    labels = client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json()
    assert [lab["ranks"] for lab in labels] == [[4, 3, 2, 1]]
    rows = [json.loads(line) for line in client.get(f"/api/campaigns/{campaign['id']}/export?kind=rankings", headers=admin).text.splitlines()]
    assert [r["ranking"] for r in rows] == [[4, 3, 2, 1]]
    # nobody else sees or revises it
    assert client.get(f"/api/history/{aid}", headers=bob).status_code == 404
    assert client.get("/api/history", headers=bob).json() == []
    assert _label(client, bob, aid, ranks=[1, 2, 3, 4]).status_code == 404
    # a closed campaign's answer is no longer revisable
    client.patch(f"/api/campaigns/{campaign['id']}", json={"status": "closed"}, headers=admin)
    assert client.get("/api/history", headers=ann).json()[0]["revisable"] is False
    assert _label(client, ann, aid, ranks=[1, 2, 3, 4]).status_code == 409


def test_history_and_queue_pages(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS)
    ann = make_labeler(client, admin, "ann")
    first = _next(client, ann, campaign["id"])
    _label(client, ann, first["assignment_id"], ranks=[2, 1, 3, 4])
    second = _next(client, ann, campaign["id"])
    client.post(f"/api/assignments/{second['assignment_id']}/skip", headers=ann)
    sign_in(client, ann["Authorization"].split()[1])

    queue = client.get("/queue").text
    assert f'action="/queue/unskip/{second["assignment_id"]}"' in queue and second["item_id"] in queue
    label_page = client.get(f"/label/{campaign['id']}?skipped={second['assignment_id']}").text
    assert 'id="undo-skip"' in label_page
    assert 'id="undo-skip"' not in client.get(f"/label/{campaign['id']}?skipped={first['assignment_id']}").text  # not skipped

    history = client.get("/history").text
    assert f'href="/history/{first["assignment_id"]}"' in history
    position_of_index_1 = [c["index"] for c in first["completions"]].index(1)
    assert f"#{position_of_index_1 + 1}: 1" in history  # the answer in the order the labeler saw
    revise = client.get(f"/history/{first['assignment_id']}")
    assert revise.status_code == 200 and 'id="revise-notice"' in revise.text and "data-prefill='" in revise.text
    assert client.get(f"/history/{second['assignment_id']}").status_code == 404  # skipped, not answered

    back = client.post(f"/queue/unskip/{second['assignment_id']}", follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == f"/label/{campaign['id']}"
    assert client.post(f"/queue/unskip/{second['assignment_id']}").status_code == 409
