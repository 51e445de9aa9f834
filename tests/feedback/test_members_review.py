"""Campaign members through the API, the pages and the command line; the review of labels with
its filters and pages; the agreement table's links to it."""

from __future__ import annotations

import json

from conftest import ADMIN_TOKEN, make_campaign, make_labeler, sign_in
from tether.feedback.cli import main
from tether.storage import FeedbackStore


def _next(client, labeler, campaign_id):
    return client.get(f"/api/campaigns/{campaign_id}/next", headers=labeler)


# ---- members -----------------------------------------------------------------------------------


def test_members_api_hides_the_campaign_from_others(client, admin):
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    campaign = make_campaign(client, admin, name="private", members=["ann"])
    open_one = make_campaign(client, admin, name="open")
    assert [m["name"] for m in client.get(f"/api/campaigns/{campaign['id']}/members", headers=admin).json()] == ["ann"]
    assert {c["name"] for c in client.get("/api/queue", headers=ann).json()} == {"private", "open"}
    assert {c["name"] for c in client.get("/api/queue", headers=bob).json()} == {"open"}
    assert _next(client, bob, campaign["id"]).status_code == 404
    assert client.post(f"/api/campaigns/{campaign['id']}/redteam", json={}, headers=bob).status_code == 404
    assert _next(client, bob, open_one["id"]).status_code == 200

    task = _next(client, ann, campaign["id"]).json()
    members = client.post(f"/api/campaigns/{campaign['id']}/members", json={"labelers": ["bob"]}, headers=admin).json()
    assert [m["name"] for m in members] == ["ann", "bob"]
    ann_id = members[0]["id"]
    assert [m["name"] for m in client.delete(f"/api/campaigns/{campaign['id']}/members/{ann_id}", headers=admin).json()] == ["bob"]
    answer = client.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": [1, 2, 3]}, headers=ann)
    assert answer.status_code == 404  # no longer a member: the task is not hers to answer
    assert _next(client, bob, campaign["id"]).status_code == 200
    assert client.delete(f"/api/campaigns/{campaign['id']}/members/{ann_id}", headers=admin).status_code == 404


def test_members_api_errors(client, admin):
    make_labeler(client, admin, "ann")
    campaign = make_campaign(client, admin)
    response = client.post(f"/api/campaigns/{campaign['id']}/members", json={"labelers": ["ghost"]}, headers=admin)
    assert response.status_code == 404 and "ghost" in response.json()["detail"]
    assert client.post(f"/api/campaigns/{campaign['id']}/members", json={"labelers": []}, headers=admin).status_code == 422
    body = {"name": "x", "kind": "rank", "items": [{"prompt": "p", "completions": ["a", "b"]}], "members": ["ghost"]}
    assert client.post("/api/campaigns", json=body, headers=admin).status_code == 404
    assert client.get("/api/campaigns", headers=admin).json()[0]["name"] == "c"  # nothing half made
    labeler = make_labeler(client, admin, "bob")
    assert client.get(f"/api/campaigns/{campaign['id']}/members", headers=labeler).status_code == 403


def test_members_pages(client, admin):
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    campaign = make_campaign(client, admin, name="private")
    sign_in(client, ADMIN_TOKEN)
    assert "No members" in client.get(f"/admin/campaigns/{campaign['id']}").text
    assert client.post(f"/admin/campaigns/{campaign['id']}/members", data={"labeler": "ann"}, follow_redirects=False).status_code == 303
    page = client.get(f"/admin/campaigns/{campaign['id']}").text
    assert 'class="member-name">ann<' in page and "Only these labelers" in page
    sign_in(client, bob["Authorization"].split()[1])
    assert "private" not in client.get("/queue").text
    assert client.get(f"/label/{campaign['id']}").status_code == 404
    sign_in(client, ann["Authorization"].split()[1])
    assert "private" in client.get("/queue").text and client.get(f"/label/{campaign['id']}").status_code == 200
    sign_in(client, ADMIN_TOKEN)
    ann_id = client.get(f"/api/campaigns/{campaign['id']}/members", headers=admin).json()[0]["id"]
    assert client.post(f"/admin/campaigns/{campaign['id']}/members/{ann_id}/remove", follow_redirects=False).status_code == 303
    assert client.get(f"/api/campaigns/{campaign['id']}/members", headers=admin).json() == []


def test_members_command_and_import_members(tmp_path, db_url, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completions": ["a", "b"]}) + "\n", encoding="utf-8")
    args = ["--db", db_url]
    for name in ("ann", "bob", "cat"):
        assert main(["add-labeler", name, *args]) == 0
    assert main(["import", str(path), "--name", "c", "--members", "ann, bob", *args]) == 0
    assert "members ann, bob" in capsys.readouterr().out
    assert main(["members", "c", "--add", "cat", "--remove", "ann", *args]) == 0
    assert capsys.readouterr().out.strip() == "c: members bob, cat"
    assert main(["members", "c", "--add", "ghost", *args]) == 1
    assert "ghost" in capsys.readouterr().err
    assert main(["import", str(path), "--name", "d", "--members", "ghost", *args]) == 1
    store = FeedbackStore(db_url)
    assert [c.name for c in store.list_campaigns()] == ["c"]
    assert main(["members", "c", "--remove", "bob,cat", *args]) == 0
    assert "open to every labeler" in capsys.readouterr().out


# ---- review ------------------------------------------------------------------------------------


def _pair_of_labelers(client, admin, n_items=3):
    """Two labelers, two per item: ann ranks a > b > c, cat the reverse."""
    items = [{"prompt": f"prompt {i}", "completions": ["a", "b", "c"], "id": f"i{i}"} for i in range(n_items)]
    campaign = make_campaign(client, admin, items=items, labelers_per_item=2)
    for name, ranks in (("ann", [1, 2, 3]), ("cat", [3, 2, 1])):
        labeler = make_labeler(client, admin, name)
        while (task := _next(client, labeler, campaign["id"])).status_code == 200:
            body = {"ranks": ranks, "duration_ms": 30_000}
            client.post(f"/api/assignments/{task.json()['assignment_id']}/label", json=body, headers=labeler)
    return campaign


def _review(client, admin, campaign, **params):
    response = client.get(f"/api/campaigns/{campaign['id']}/review", params=params, headers=admin)
    assert response.status_code == 200, response.text
    return response.json()


def test_review_filters(client, admin):
    campaign = _pair_of_labelers(client, admin)
    everything = _review(client, admin, campaign)
    assert everything["n_items"] == 3 and sum(len(i["labels"]) for i in everything["items"]) == 6
    disputed = _review(client, admin, campaign, disagreements="true")
    assert disputed["n_items"] == 3 and all(i["disagreement"] and i["agreement"] == 0.0 for i in disputed["items"])
    only_cat = _review(client, admin, campaign, labeler="cat")
    assert all(any(lab["match"] and lab["labeler"] == "cat" for lab in i["labels"]) for i in only_cat["items"])
    assert all(not lab["match"] for i in only_cat["items"] for lab in i["labels"] if lab["labeler"] != "cat")
    one = _review(client, admin, campaign, item="i1")
    assert [i["item_id"] for i in one["items"]] == ["i1"]
    assert _review(client, admin, campaign, fast="true")["n_items"] == 0
    assert _review(client, admin, campaign, flagged="true")["n_items"] == 0
    assert client.get(f"/api/campaigns/{campaign['id']}/review", params={"page": 0}, headers=admin).status_code == 422


def test_review_flags_fast_and_flagged_answers_and_pages(client, admin):
    items = [{"prompt": f"prompt {i}", "completions": ["a", "b", "c"], "id": f"i{i}"} for i in range(25)]
    campaign = make_campaign(client, admin, items=items, labelers_per_item=2)
    ann, dan = make_labeler(client, admin, "ann"), make_labeler(client, admin, "dan")
    for labeler, answer in ((ann, {"ranks": [1, 2, 3], "duration_ms": 30_000}), (dan, {"ranks": [1, 3, 2], "unusable": [False, True, False], "duration_ms": 50})):
        while (task := _next(client, labeler, campaign["id"])).status_code == 200:
            client.post(f"/api/assignments/{task.json()['assignment_id']}/label", json=answer, headers=labeler)
    first = _review(client, admin, campaign)
    assert (first["n_items"], first["n_pages"], len(first["items"])) == (25, 2, 20)
    second = _review(client, admin, campaign, page=2)
    assert [i["item_id"] for i in second["items"]] == [f"i{i}" for i in range(20, 25)]
    assert _review(client, admin, campaign, page=3)["items"] == []
    fast = _review(client, admin, campaign, fast="true", labeler="dan")
    assert fast["n_items"] == 25 and all(lab["fast"] == (lab["labeler"] == "dan") for i in fast["items"] for lab in i["labels"])
    flagged = _review(client, admin, campaign, flagged="true")
    assert flagged["n_items"] == 25 and all(lab["match"] == lab["flagged"] for i in flagged["items"] for lab in i["labels"])
    assert _review(client, admin, campaign, fast="true", labeler="ann")["n_items"] == 0


def test_review_page_and_links_from_the_campaign(client, admin):
    items = [{"prompt": f"<script>p{i}</script>", "completions": ["a", "b", "c"], "id": f"i{i}"} for i in range(3)]
    campaign = make_campaign(client, admin, items=items, labelers_per_item=2)
    ann, cat = make_labeler(client, admin, "ann"), make_labeler(client, admin, "cat")
    for labeler, ranks in ((ann, [1, 2, 3]), (cat, [3, 2, 1])):
        while (task := _next(client, labeler, campaign["id"])).status_code == 200:
            body = {"ranks": ranks, "note": "<b>why</b>", "duration_ms": 12_345}
            client.post(f"/api/assignments/{task.json()['assignment_id']}/label", json=body, headers=labeler)
    sign_in(client, ADMIN_TOKEN)
    page = client.get(f"/admin/campaigns/{campaign['id']}").text
    assert f'href="/admin/review?campaign={campaign["id"]}&amp;labeler=ann"' in page
    assert f'href="/admin/review?campaign={campaign["id"]}&amp;item=i0"' in page  # the most disagreed items
    review = client.get(f"/admin/review?campaign={campaign['id']}&labeler=cat&disagreements=true")
    assert review.status_code == 200
    assert review.text.count('class="card review-item"') == 3 and "3 item(s)" in review.text
    assert "&lt;script&gt;p0&lt;/script&gt;" in review.text and "<script>p0" not in review.text
    assert "&lt;b&gt;why&lt;/b&gt;" in review.text and "12.3 s" in review.text
    assert review.text.count('class="match" data-labeler="cat"') == 3
    assert 'id="f-disagreements" checked' in review.text
    assert client.get("/admin/review?campaign=999").status_code == 404
    sign_in(client, ann["Authorization"].split()[1])
    assert client.get(f"/admin/review?campaign={campaign['id']}").status_code == 403
    assert client.get(f"/api/campaigns/{campaign['id']}/review", headers=ann).status_code == 403


def test_new_campaign_form_takes_a_gold_file_and_members(client, admin):
    make_labeler(client, admin, "ann")
    make_labeler(client, admin, "bob")
    sign_in(client, ADMIN_TOKEN)
    assert 'name="members" value="ann"' in client.get("/admin/campaigns/new").text
    rows = "\n".join(json.dumps({"prompt": f"p{i}", "completions": ["a", "b"]}) for i in range(3))
    gold = json.dumps({"prompt": "g", "completions": ["right", "wrong"], "best": 0})
    form = {"name": "formed", "kind": "rank", "gold_rate": "0.25", "members": ["ann"]}
    files = {"file": ("c.jsonl", rows, "application/json"), "gold_file": ("g.jsonl", gold, "application/json")}
    response = client.post("/admin/campaigns", data=form, files=files, follow_redirects=False)
    assert response.status_code == 303, response.text
    campaign_id = int(response.headers["location"].rsplit("/", 1)[1])
    campaign = client.get(f"/api/campaigns/{campaign_id}", headers=admin).json()
    assert (campaign["n_items"], campaign["gold_rate"]) == (4, 0.25)
    assert [m["name"] for m in client.get(f"/api/campaigns/{campaign_id}/members", headers=admin).json()] == ["ann"]
    assert "Gold items: 1" in client.get(f"/admin/campaigns/{campaign_id}").text
    bad = client.post("/admin/campaigns", data={**form, "name": "bad"}, files={**files, "gold_file": ("g.jsonl", '{"prompt": "g", "completions": ["a", "b"]}', "x")})
    assert bad.status_code == 400 and "gold file:1" in bad.text
