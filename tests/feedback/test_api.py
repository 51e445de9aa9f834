"""The JSON API on a temporary database: labeling flows for every task kind, privacy, limits."""

from __future__ import annotations

import json

from conftest import bearer, make_campaign, make_labeler


def _next(client, labeler, campaign_id):
    response = client.get(f"/api/campaigns/{campaign_id}/next", headers=labeler)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def _label(client, labeler, task, **answer):
    return client.post(f"/api/assignments/{task['assignment_id']}/label", json=answer, headers=labeler)


def test_rank_flow_consensus_and_export(client, admin):
    campaign = make_campaign(client, admin, labelers_per_item=2, guidelines="Prefer <b>helpful</b> answers.")
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    for labeler in (ann, bob):
        while (task := _next(client, labeler, campaign["id"])) is not None:
            assert task["guidelines"] == "Prefer <b>helpful</b> answers."
            texts = {c["index"]: c["text"] for c in task["completions"]}
            assert sorted(texts) == [0, 1, 2] and texts[0].startswith("answer")
            response = _label(client, labeler, task, ranks=[1, 2, 3], unusable=[False, False, True], note="ok")
            assert response.status_code == 200 and response.json()["updated"] is False
    progress = client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()
    assert (progress["n_labels"], progress["n_target"], progress["n_items_complete"]) == (6, 6, 3)
    export = client.get(f"/api/campaigns/{campaign['id']}/export", headers=admin)
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in export.text.splitlines()]
    assert len(rows) == 3 * 3 and {"prompt", "chosen", "rejected", "margin"} <= set(rows[0])
    agreement = client.get(f"/api/campaigns/{campaign['id']}/agreement", headers=admin).json()
    assert agreement["pairwise"] == 1.0 and agreement["alpha"] == 1.0 and agreement["n_items_multi"] == 3
    labels = client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json()
    assert len(labels) == 6 and labels[0]["unusable"] == [False, False, True]


def test_resubmission_updates(client, admin):
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    assert _label(client, ann, task, ranks=[1, 2, 3]).json()["updated"] is False
    assert _label(client, ann, task, ranks=[3, 2, 1]).json()["updated"] is True
    labels = client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json()
    assert [lab["ranks"] for lab in labels] == [[3, 2, 1]]


def test_invalid_answers_are_rejected(client, admin):
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    assert _label(client, ann, task, ranks=[1, 2]).status_code == 422
    assert _label(client, ann, task, ranks=[1, 2, 9]).status_code == 422
    assert _label(client, ann, task, choice="A").status_code == 422
    assert _label(client, ann, task, ranks=[1, 2, 3], surprise=1).status_code == 422
    assert client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json() == []


def test_pair_kind_splits_items_and_takes_choices(client, admin):
    items = [{"prompt": "p", "completions": ["a", "b", "c"], "id": "q"}]
    campaign = make_campaign(client, admin, kind="pair", items=items)
    assert campaign["n_items"] == 3  # every pair of 3 completions
    ann = make_labeler(client, admin, "ann")
    seen = []
    while (task := _next(client, ann, campaign["id"])) is not None:
        seen.append(task["item_id"])
        assert len(task["completions"]) == 2
        assert _label(client, ann, task, choice="A").status_code == 200
    assert sorted(seen) == ["q:0-1", "q:0-2", "q:1-2"]
    rows = client.get(f"/api/campaigns/{campaign['id']}/export", headers=admin).text.splitlines()
    assert [(json.loads(r)["chosen"], json.loads(r)["rejected"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]


def test_thumbs_kind(client, admin):
    items = [{"prompt": "p", "completions": ["good", "bad"]}]
    campaign = make_campaign(client, admin, kind="thumbs", items=items)
    ann = make_labeler(client, admin, "ann")
    while (task := _next(client, ann, campaign["id"])) is not None:
        thumb = 1 if task["completions"][0]["text"] == "good" else 0
        assert _label(client, ann, task, thumb=thumb).status_code == 200
    rows = [json.loads(r) for r in client.get(f"/api/campaigns/{campaign['id']}/export", headers=admin).text.splitlines()]
    assert [(r["completion"], r["label"]) for r in rows] == [("good", 1), ("bad", 0)]


def test_redteam_seeded_and_free_writing(client, admin):
    campaign = make_campaign(client, admin, kind="redteam", items=[{"prompt": "seed attack"}])
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    assert task["prompt"] == "seed attack" and task["assignment_id"]
    answer = {"prompt": "seed attack, sharper", "response": "harmful text", "harm": 3, "better_response": "No."}
    assert _label(client, ann, task, **answer).status_code == 200
    free = _next(client, ann, campaign["id"])
    assert free["assignment_id"] is None and free["prompt"] == ""
    url = f"/api/campaigns/{campaign['id']}/redteam"
    assert client.post(url, json={"prompt": "new", "response": "fine", "harm": 0}, headers=ann).status_code == 200
    assert client.post(url, json={"prompt": "new", "response": "fine"}, headers=ann).status_code == 422  # no harm rating
    gen = client.post(f"/api/campaigns/{campaign['id']}/generate", json={"prompt": "x"}, headers=ann)
    assert gen.status_code == 400 and "paste" in gen.json()["detail"]
    rows = [json.loads(r) for r in client.get(f"/api/campaigns/{campaign['id']}/export", headers=admin).text.splitlines()]
    assert [(r["prompt"], r["harm"]) for r in rows] == [("seed attack, sharper", 3), ("new", 0)]
    pairs = client.get(f"/api/campaigns/{campaign['id']}/export?kind=pairs", headers=admin).text.splitlines()
    assert [json.loads(p)["chosen"] for p in pairs] == ["No."]


def test_free_writing_only_in_redteam(client, admin):
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    response = client.post(f"/api/campaigns/{campaign['id']}/redteam", json={"prompt": "x", "response": "y", "harm": 1}, headers=ann)
    assert response.status_code == 422


def test_skip_and_closed_campaign(client, admin):
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    assert client.post(f"/api/assignments/{task['assignment_id']}/skip", headers=ann).status_code == 204
    assert _next(client, ann, campaign["id"])["assignment_id"] != task["assignment_id"]
    assert client.patch(f"/api/campaigns/{campaign['id']}", json={"status": "closed"}, headers=admin).json()["status"] == "closed"
    assert client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).status_code == 404
    assert client.get("/api/queue", headers=ann).json() == []


def test_labelers_cannot_touch_each_others_work(client, admin):
    campaign = make_campaign(client, admin, labelers_per_item=2)
    ann, bob = make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")
    task = _next(client, ann, campaign["id"])
    assert _label(client, bob, task, ranks=[1, 2, 3]).status_code == 404
    assert client.post(f"/api/assignments/{task['assignment_id']}/skip", headers=bob).status_code == 404
    for path in ("/api/campaigns", f"/api/campaigns/{campaign['id']}/labels", f"/api/campaigns/{campaign['id']}/export", "/api/labelers"):
        assert client.get(path, headers=bob).status_code == 403, path
    assert client.get("/api/me", headers=bob).json() == {"role": "labeler", "name": "bob"}


def test_tokens_admin_labelers_and_disabling(client, admin):
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers=bearer("nope")).status_code == 401
    assert client.get("/api/me", headers=admin).json()["role"] == "admin"
    ann = make_labeler(client, admin, "ann")
    assert client.post("/api/labelers", json={"name": "ann"}, headers=admin).status_code == 409
    labeler_id = client.get("/api/labelers", headers=admin).json()[0]["id"]
    assert client.patch(f"/api/labelers/{labeler_id}", json={"active": False}, headers=admin).status_code == 200
    assert client.get("/api/me", headers=ann).status_code == 401
    client.patch(f"/api/labelers/{labeler_id}", json={"active": True}, headers=admin)
    new = client.post(f"/api/labelers/{labeler_id}/token", headers=admin).json()["token"]
    assert client.get("/api/me", headers=ann).status_code == 401
    assert client.get("/api/me", headers=bearer(new)).status_code == 200
    assert client.get("/api/queue", headers=admin).status_code == 403  # the admin does not label


def test_campaign_validation(client, admin):
    bad = {"name": "x", "kind": "rank", "items": [{"prompt": "p", "completions": ["only one"]}]}
    response = client.post("/api/campaigns", json=bad, headers=admin)
    assert response.status_code == 422 and "items[0]" in response.json()["detail"]
    assert client.post("/api/campaigns", json={"name": "x", "kind": "vote"}, headers=admin).status_code == 422
    make_campaign(client, admin, name="dup")
    dup = client.post("/api/campaigns", json={"name": "dup", "kind": "redteam"}, headers=admin)
    assert dup.status_code == 409
    more = {"items": [{"prompt": "q", "completions": ["a", "b"]}]}
    assert client.post("/api/campaigns/1/items", json=more, headers=admin).json()["n_items"] == 4
    assert client.get("/api/campaigns/999", headers=admin).status_code == 404
    assert client.get("/api/campaigns/1/export?kind=thumbs", headers=admin).status_code == 400


def test_request_size_is_bounded(client, admin):
    huge = {"name": "big", "kind": "rank", "items": [{"prompt": "p" * 1000, "completions": ["a", "b"]}] * 2000}
    assert client.post("/api/campaigns", json=huge, headers=admin).status_code == 413
    long_note = "n" * 20_000
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = _next(client, ann, campaign["id"])
    assert _label(client, ann, task, ranks=[1, 2, 3], note=long_note).status_code == 422


def test_outlier_labeler_is_reported(client, admin):
    items = [{"prompt": f"p{i}", "completions": ["good", "bad"]} for i in range(6)]
    campaign = make_campaign(client, admin, kind="pair", items=items, labelers_per_item=4)
    labelers = {name: make_labeler(client, admin, name) for name in ("ann", "bob", "cat", "dan")}
    for name, labeler in labelers.items():
        while (task := _next(client, labeler, campaign["id"])) is not None:
            _label(client, labeler, task, choice="B" if name == "dan" else "A")
    report = client.get(f"/api/campaigns/{campaign['id']}/agreement", headers=admin).json()
    assert report["outliers"] == ["dan"]
    dan = next(row for row in report["labelers"] if row["name"] == "dan")
    assert dan["consensus"] == 0.0 and dan["outlier"] is True


def test_openapi_schema_lists_the_api(client):
    schema = client.get("/openapi.json").json()
    assert "/api/assignments/{assignment_id}/label" in schema["paths"]
    assert "/api/campaigns/{campaign_id}/export" in schema["paths"]
    assert not any(path.startswith("/admin") for path in schema["paths"])


def test_ids_beyond_64_bits_are_rejected_not_a_server_error(client, admin):
    # found by fuzzing: SQLite integers are 64-bit, and a larger path id used to fail inside the driver
    huge = 2**64
    ann = make_labeler(client, admin, "ann")
    for method, path, who in [("GET", f"/api/campaigns/{huge}", admin), ("GET", f"/api/campaigns/{huge}/agreement", admin),
                              ("POST", f"/api/labelers/{huge}/token", admin), ("POST", f"/api/assignments/{huge}/skip", ann)]:
        response = client.request(method, path, headers=who)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "path", (path, response.text)
    assert client.get(f"/admin/campaigns/{huge}", headers=admin).status_code == 422
    assert client.get(f"/label/{huge}", headers=ann).status_code == 422


def test_export_of_a_campaign_with_a_non_latin_name(client, admin):
    # found by fuzzing: HTTP headers are Latin-1, so the file name travels percent-encoded (RFC 6266)
    from urllib.parse import unquote

    campaign = make_campaign(client, admin, name='日本 "€" \\ campaign')
    response = client.get(f"/api/campaigns/{campaign['id']}/export", headers=admin)
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    fallback, encoded = disposition.split('filename="')[1].split('"; filename*=UTF-8\'\'')
    assert fallback == "__ ___ _ campaign.pairs.consensus.jsonl"
    assert unquote(encoded) == '日本 "€" \\ campaign.pairs.consensus.jsonl'


def test_export_of_one_labelers_own_answers(client, admin):
    campaign = make_campaign(client, admin, labelers_per_item=2)
    for name, ranks in (("ann", [1, 2, 3]), ("bob", [3, 2, 1])):
        labeler = make_labeler(client, admin, name)
        while (task := _next(client, labeler, campaign["id"])) is not None:
            assert _label(client, labeler, task, ranks=ranks).status_code == 200
    url = f"/api/campaigns/{campaign['id']}/export"
    rows = [json.loads(line) for line in client.get(url, params={"labeler": "bob"}, headers=admin).text.splitlines()]
    assert len(rows) == 3 * 3 and {r["labeler"] for r in rows} == {"bob"}
    assert all(r["chosen"] > r["rejected"] for r in rows)  # bob ranks answer i.2 above i.1 above i.0
    missing = client.get(url, params={"labeler": "zed"}, headers=admin)
    assert missing.status_code == 400 and "no labels in this campaign" in missing.text
