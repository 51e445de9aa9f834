"""Server-rendered pages: every task kind renders, and the admin forms create what they say."""

from __future__ import annotations

import json

import pytest

from conftest import ADMIN_TOKEN, make_campaign, make_labeler, sign_in

ITEMS = {
    "rank": [{"prompt": "p", "completions": ["a", "b", "c"]}],
    "pair": [{"prompt": "p", "completions": ["a", "b"]}],
    "thumbs": [{"prompt": "p", "completions": ["a"]}],
    "redteam": [{"prompt": "seed"}],
}
MARKERS = {"rank": "rank-btn", "pair": 'data-side="tie"', "thumbs": 'data-thumb="1"', "redteam": 'name="harm"'}


def _as(client, headers):
    sign_in(client, headers["Authorization"].split()[1])


@pytest.mark.parametrize("kind", sorted(ITEMS))
def test_task_page_renders_for_every_kind(client, admin, kind):
    campaign = make_campaign(client, admin, kind=kind, items=ITEMS[kind], guidelines="Read me.")
    _as(client, make_labeler(client, admin, "ann"))
    page = client.get(f"/label/{campaign['id']}")
    assert page.status_code == 200
    assert MARKERS[kind] in page.text and "Read me." in page.text and 'id="submit"' in page.text
    queue = client.get("/queue")
    assert campaign["name"] in queue.text


def test_finished_queue_says_so(client, admin):
    campaign = make_campaign(client, admin, items=ITEMS["rank"])
    labeler = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=labeler).json()
    client.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": [1, 2, 3]}, headers=labeler)
    _as(client, labeler)
    assert 'id="done"' in client.get(f"/label/{campaign['id']}").text


def test_admin_creates_campaign_from_upload(client):
    sign_in(client, ADMIN_TOKEN)
    rows = "\n".join(json.dumps({"prompt": f"p{i}", "completions": ["a", "b"]}) for i in range(4))
    form = {"name": "up", "kind": "pair", "labelers_per_item": "2", "guidelines": "g"}
    response = client.post("/admin/campaigns", data=form, files={"file": ("c.jsonl", rows, "application/json")}, follow_redirects=False)
    assert response.status_code == 303
    page = client.get(response.headers["location"])
    assert "0 of 8 labels" in page.text and "Guidelines" in page.text


def test_admin_creates_redteam_campaign_from_pasted_prompts(client):
    sign_in(client, ADMIN_TOKEN)
    form = {"name": "rt", "kind": "redteam", "prompts": "attack one\n\nattack two\n"}
    response = client.post("/admin/campaigns", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert "0 of 2 labels" in client.get(response.headers["location"]).text


def test_admin_form_errors_are_shown(client):
    sign_in(client, ADMIN_TOKEN)
    bad = client.post("/admin/campaigns", data={"name": "x", "kind": "rank"}, files={"file": ("c.jsonl", "{not json", "text/plain")})
    assert bad.status_code == 400 and "uploaded file:1: not valid JSON" in bad.text
    no_model = client.post("/admin/campaigns", data={"name": "x", "kind": "rank", "prompts": "hello"})
    assert no_model.status_code == 400 and "prompt 1" in no_model.text


def _fake_sampler(model_path, prompts, k):
    return [[f"{model_path} answer {j} to {p}" for j in range(k)] for p in prompts]


def test_admin_samples_completions_for_pasted_prompts(client, admin, store, monkeypatch):
    """The form queues a sampling job (the web process loads no model); a worker samples and creates the campaign."""
    import tether.feedback.service as service
    from tether.feedback.worker import run_worker
    from tether.storage import JobQueue

    monkeypatch.setattr(service, "_sampler", lambda: _fake_sampler)
    sign_in(client, ADMIN_TOKEN)
    form = {"name": "sampled", "kind": "rank", "prompts": "one\ntwo", "model_path": "runs/sft", "k": "3"}
    response = client.post("/admin/campaigns", data=form, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/admin?job=")
    assert client.get("/api/campaigns", headers=admin).json() == []  # nothing sampled in the request
    [job] = client.get("/api/jobs", headers=admin).json()
    assert (job["kind"], job["status"]) == ("sample", "queued") and "'sampled'" in job["title"]
    assert "queued" in client.get("/admin").text  # the jobs list on the admin page
    assert run_worker(store, "w1", once=True) == 1
    done = client.get(f"/api/jobs/{job['id']}", headers=admin).json()
    assert (done["status"], done["progress"]) == ("done", 1.0)
    campaign = client.get("/api/campaigns", headers=admin).json()[0]
    assert done["result"] == {"campaign_id": campaign["id"], "campaign": "sampled", "n_items": 2}
    assert campaign["n_items"] == 2 and campaign["model_path"] == "runs/sft"
    assert f'href="/admin/campaigns/{campaign["id"]}"' in client.get("/admin").text
    labeler = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=labeler).json()
    assert sorted(c["text"] for c in task["completions"]) == [f"runs/sft answer {j} to one" for j in range(3)]
    assert JobQueue(store).get(job["id"]).claimed_by == "w1"


def test_sampling_failures_are_shown_not_raised(client, admin, store, monkeypatch):
    import tether.feedback.service as service
    from tether.feedback.worker import run_worker

    def broken(model_path, prompts, k):
        raise OSError("no such model")

    monkeypatch.setattr(service, "_sampler", lambda: broken)
    sign_in(client, ADMIN_TOKEN)
    response = client.post("/admin/campaigns", data={"name": "x", "kind": "rank", "prompts": "hello", "model_path": "m"}, follow_redirects=False)
    assert response.status_code == 303
    run_worker(store, "w1", once=True)
    [job] = client.get("/api/jobs", headers=admin).json()
    assert job["status"] == "failed" and "no such model" in job["error"]
    assert "no such model" in client.get("/admin").text
    assert client.get("/api/campaigns", headers=admin).json() == []


def test_sampled_campaign_keeps_the_forms_gold_items_and_members(client, admin, store, monkeypatch):
    import tether.feedback.service as service
    from tether.feedback.worker import run_worker

    monkeypatch.setattr(service, "_sampler", lambda: _fake_sampler)
    make_labeler(client, admin, "ann")
    sign_in(client, ADMIN_TOKEN)
    form = {"name": "sampled", "kind": "rank", "prompts": "one", "model_path": "m", "k": "2", "members": ["ann"], "gold_rate": "0.3"}
    gold = ("gold.jsonl", '{"prompt": "2 + 2?", "completions": ["4", "5"], "best": 0}\n', "text/plain")
    ghost = client.post("/admin/campaigns", data={**form, "members": ["nobody"]}, files={"gold_file": gold})
    assert ghost.status_code == 404 and "nobody" in ghost.text  # checked before anything is queued
    assert client.post("/admin/campaigns", data=form, files={"gold_file": gold}, follow_redirects=False).status_code == 303
    run_worker(store, "w1", once=True)
    campaign = store.campaign_by_name("sampled")
    assert [m.name for m in store.list_members(campaign.id)] == ["ann"] and campaign.gold_rate == 0.3
    items = store.list_items(campaign.id)
    assert [i.gold is not None for i in items] == [False, True] and items[0].completions == ["m answer 0 to one", "m answer 1 to one"]


def test_sampling_form_checks_before_queueing(client, admin):
    sign_in(client, ADMIN_TOKEN)
    make_campaign(client, admin, name="taken")
    taken = client.post("/admin/campaigns", data={"name": "taken", "kind": "rank", "prompts": "hello", "model_path": "m"})
    assert taken.status_code == 409 and "already exists" in taken.text
    one = client.post("/admin/campaigns", data={"name": "new", "kind": "rank", "prompts": "hello", "model_path": "m", "k": "1"})
    assert one.status_code == 400 and "k: ranking needs 2 to" in one.text
    assert client.get("/api/jobs", headers=admin).json() == []


def test_redteam_generate_uses_the_campaign_model(client, admin, store, monkeypatch):
    """The answer comes from a worker (a `respond` job); the request waits for it."""
    import threading

    import time

    import tether.feedback.service as service
    from tether.feedback.worker import run_worker
    from tether.storage import JobQueue

    monkeypatch.setattr(service, "_sampler", lambda: _fake_sampler)
    campaign = make_campaign(client, admin, kind="redteam", items=[], model_path="runs/policy")
    labeler = make_labeler(client, admin, "ann")
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(store, "w1"), kwargs={"poll_s": 0.05, "stop": stop})
    worker.start()
    try:
        while not JobQueue(store).worker_seen_within(60):  # the worker's first round
            time.sleep(0.02)
        response = client.post(f"/api/campaigns/{campaign['id']}/generate", json={"prompt": "attack"}, headers=labeler)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert response.json() == {"response": "runs/policy answer 0 to attack"}
    [job] = client.get("/api/jobs", headers=admin).json()
    assert (job["kind"], job["status"], job["claimed_by"]) == ("respond", "done", "w1")


def test_redteam_generate_without_a_worker_says_so(client, admin, store, monkeypatch):
    import tether.feedback.service as service
    from tether.storage import JobQueue

    campaign = make_campaign(client, admin, kind="redteam", items=[], model_path="runs/policy")
    labeler = make_labeler(client, admin, "ann")
    url = f"/api/campaigns/{campaign['id']}/generate"
    none = client.post(url, json={"prompt": "attack"}, headers=labeler)
    assert none.status_code == 400 and "no worker is running" in none.json()["detail"]
    assert client.get("/api/jobs", headers=admin).json() == []  # nothing queued that nobody would run
    JobQueue(store).mark_alive("busy-worker")  # a worker runs, but never takes the job
    monkeypatch.setattr(service, "GENERATE_WAIT_S", 0.3)
    late = client.post(url, json={"prompt": "attack"}, headers=labeler)
    assert late.status_code == 400 and "no worker answered within 0.3 s" in late.json()["detail"]
    [job] = client.get("/api/jobs", headers=admin).json()
    assert job["status"] == "failed" and "nobody waited" in job["error"]  # no worker will answer it later


def test_admin_manages_labelers_and_campaign(client, admin):
    campaign = make_campaign(client, admin)
    sign_in(client, ADMIN_TOKEN)
    page = client.post("/admin/labelers", data={"name": "ann"})
    assert page.status_code == 200 and 'id="token-value"' in page.text
    assert client.post("/admin/labelers", data={"name": "ann"}).status_code == 409
    labeler_id = client.get("/api/labelers", headers=admin).json()[0]["id"]
    assert 'id="token-value"' in client.post(f"/admin/labelers/{labeler_id}/token").text
    client.post(f"/admin/labelers/{labeler_id}/active", data={"active": "false"})
    assert client.get("/api/labelers", headers=admin).json()[0]["active"] is False
    client.post(f"/admin/campaigns/{campaign['id']}", data={"guidelines": "new rules"})
    client.post(f"/admin/campaigns/{campaign['id']}", data={"status": "closed"})
    got = client.get(f"/api/campaigns/{campaign['id']}", headers=admin).json()
    assert (got["guidelines"], got["status"]) == ("new rules", "closed")
    assert client.get("/admin/campaigns/999").status_code == 404
