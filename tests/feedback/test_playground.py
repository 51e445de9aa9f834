"""The playground: its configuration (models found in PPO run and loop directories), a prompt answered by
tiny random-init models in the worker with reward-model and judge scores, and thumbs landing in the
thumbs campaign tagged with the model that wrote the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import ADMIN_TOKEN, make_labeler, sign_in

from tether.errors import ConfigError
from tether.feedback.app import create_app
from tether.feedback.playground import load_playground, run_models
from tether.feedback.worker import run_worker
from tether.storage import JobQueue


def save_tiny_policy(path: Path, seed: int) -> Path:
    """A tiny random-init causal LM in Hugging Face format (each seed gives other weights, so other answers)."""
    from tether.models.tiny import tiny_causal_lm

    model, tokenizer = tiny_causal_lm("llama", seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fake_ppo_run(root: Path, policy: str, kls: dict[int, float], checkpoints: list[int], finished: bool = True) -> Path:
    """A PPO run directory as `tether ppo` leaves it: config.yaml, metrics.jsonl, checkpoints/step-N (HF format),
    the final model; the checkpoints and the final model are tiny models of their own seeds."""
    run = root / "ppo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name_or_path: {policy}\noutput_dir: {run}\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "objective/kl": kl, "objective/scores": 0.1}) + "\n" for s, kl in kls.items()))
    for step in checkpoints:
        save_tiny_policy(run / "checkpoints" / f"step-{step}", seed=100 + step)
        (run / "checkpoints" / f"step-{step}" / "trainer_state.pt").write_bytes(b"")
    (run / "checkpoints" / "step-9.tmp").mkdir()  # half-written: never offered
    if finished:
        save_tiny_policy(run, seed=999)
        (run / "DONE").write_text(json.dumps({"steps": max(kls), "objective/kl": kls[max(kls)]}))
    return run


def test_models_of_a_ppo_run_directory(tmp_path, tiny_models):
    run = fake_ppo_run(tmp_path, tiny_models["llama"], {1: 0.01, 2: 0.2, 3: 0.5, 4: 0.9}, checkpoints=[2, 4])
    models = run_models(run)
    assert [(m.name, m.path, m.kl) for m in models] == [
        ("ppo: reference", tiny_models["llama"], 0.0),
        ("ppo: step 2", str(run / "checkpoints" / "step-2"), 0.2),
        ("ppo: step 4", str(run / "checkpoints" / "step-4"), 0.9),
        ("ppo: final", str(run), 0.9),
    ]
    unfinished = fake_ppo_run(tmp_path / "b", tiny_models["llama"], {1: 0.1, 2: 0.3}, checkpoints=[2], finished=False)
    assert [m.name for m in run_models(unfinished)] == ["ppo: reference", "ppo: step 2"]


def test_models_of_a_loop_directory(tmp_path):
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "config.yaml").write_text("policy: runs/sft\nrounds: 2\n")
    rows = [{"round": 1, "policy": "loop/round-01/ppo", "kl_to_sft": 0.4}, {"round": 2, "policy": "loop/round-02/ppo", "kl_to_sft": 1.1}]
    (loop / "loop.json").write_text(json.dumps({"rounds": rows, "stop_reason": None}))
    assert [(m.name, m.path, m.kl) for m in run_models(loop)] == [
        ("loop: SFT", "runs/sft", 0.0), ("loop: round 1", "loop/round-01/ppo", 0.4), ("loop: round 2", "loop/round-02/ppo", 1.1),
    ]


def test_bad_playground_files_name_the_problem(tmp_path):
    path = tmp_path / "pg.yaml"
    path.write_text("models: []\n")
    with pytest.raises(ConfigError, match="no models"):
        load_playground(path)
    path.write_text("models: [{name: a, path: x}]\nreward: oops\n")
    with pytest.raises(ConfigError, match="reward: Extra inputs"):
        load_playground(path)
    path.write_text("models: [{name: a, path: x}, {name: a, path: y}]\n")
    with pytest.raises(ConfigError, match="names must differ"):
        load_playground(path)
    (tmp_path / "notarun").mkdir()
    path.write_text("runs: [notarun]\n")
    with pytest.raises(ConfigError, match="notarun has no readable config.yaml"):
        load_playground(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_playground(tmp_path / "missing.yaml")


def test_no_playground_configured(client, admin):
    assert 'href="/playground"' not in client.get("/queue", headers=make_labeler(client, admin, "ann")).text
    sign_in(client, ADMIN_TOKEN)
    assert client.get("/playground").status_code == 404
    response = client.post("/api/playground/generate", json={"prompt": "hi"}, headers=admin)
    assert response.status_code == 404 and "--playground" in response.json()["detail"]


@pytest.fixture
def playground(tmp_path, tiny_models):
    run = fake_ppo_run(tmp_path, tiny_models["llama"], {1: 0.01, 2: 0.2, 3: 0.5}, checkpoints=[2])
    path = tmp_path / "playground.yaml"
    path.write_text(
        f"runs: [{run.name}]\nreward_model: {tiny_models['rm']}\njudge: {tiny_models['rm']}\n"
        "generation: {max_new_tokens: 8, temperature: 0.7}\ncampaign: pg-thumbs\n"
    )
    return load_playground(path)


def test_playground_answers_scores_and_thumbs(store, admin, playground, tiny_models):
    """A prompt becomes a generate job; the worker answers with every model and scores them; thumbs land in
    the thumbs campaign, tagged with the model; the admin's thumbs too (under a labeler that cannot sign in)."""
    with TestClient(create_app(store, playground=playground)) as client:
        ann = make_labeler(client, admin, "ann")
        page = client.get("/playground", headers=ann)
        assert page.status_code == 200 and 'data-slot="first"' in page.text and 'data-slot="last"' in page.text
        assert 'id="no-worker"' in page.text  # no worker has run yet
        assert 'href="/playground"' in client.get("/queue", headers=ann).text  # labellers find it from their queue
        assert client.post("/api/playground/generate", json={"prompt": "   "}, headers=ann).status_code == 422
        job = client.post("/api/playground/generate", json={"prompt": "Say <b>hello</b>."}, headers=ann)
        assert job.status_code == 202 and job.json()["status"] == "queued"
        job_id = job.json()["id"]
        assert client.post("/api/playground/thumbs", json={"job_id": job_id, "model": "ppo: final", "thumb": 1}, headers=ann).status_code == 409

        assert run_worker(store, "w1", once=True) == 1
        assert 'id="no-worker"' not in client.get("/playground", headers=ann).text
        done = client.get(f"/api/jobs/{job_id}", headers=ann).json()
        assert done["status"] == "done", done["error"]
        answers = done["result"]["answers"]
        assert [a["name"] for a in answers] == ["ppo: reference", "ppo: step 2", "ppo: final"]
        assert [a["kl"] for a in answers] == [0.0, 0.2, 0.5]
        assert all(isinstance(a["text"], str) and isinstance(a["reward"], float) for a in answers)
        assert len({a["text"] for a in answers}) > 1  # other weights, other answers (same seed for every model)
        assert [a["judge"] for a in answers] == [a["reward"] for a in answers]  # the same model judges
        assert done["result"]["prompt"] == "Say <b>hello</b>."

        bob = make_labeler(client, admin, "bob")
        assert client.get(f"/api/jobs/{job_id}", headers=bob).status_code == 404  # not bob's job
        assert client.get("/api/jobs", headers=ann).status_code == 403  # the list is the admin's
        assert client.post("/api/playground/generate", json={"prompt": "hi"}).status_code == 401
        assert client.get("/playground", follow_redirects=False).headers["location"] == "/login"
        assert client.post("/api/playground/thumbs", json={"job_id": job_id, "model": "nope", "thumb": 1}, headers=ann).status_code == 422
        up = client.post("/api/playground/thumbs", json={"job_id": job_id, "model": "ppo: final", "thumb": 1}, headers=ann)
        assert up.status_code == 200 and up.json()["campaign"] == "pg-thumbs" and up.json()["updated"] is False
        down = client.post("/api/playground/thumbs", json={"job_id": job_id, "model": "ppo: reference", "thumb": 0}, headers=ann)
        again = client.post("/api/playground/thumbs", json={"job_id": job_id, "model": "ppo: reference", "thumb": 1}, headers=ann)
        assert again.json()["item_id"] == down.json()["item_id"] and again.json()["updated"] is True
        by_admin = client.post("/api/playground/thumbs", json={"job_id": job_id, "model": "ppo: step 2", "thumb": 0}, headers=admin)
        assert by_admin.status_code == 200

        campaign = store.campaign_by_name("pg-thumbs")
        assert campaign.kind.value == "thumbs"
        items = {i.model: i for i in store.list_items(campaign.id)}
        assert set(items) == {"ppo: final", "ppo: reference", "ppo: step 2"}
        final = items["ppo: final"]
        assert final.completions == [answers[2]["text"]] and final.prompt == "Say <b>hello</b>."
        assert final.meta["kl"] == 0.5 and final.meta["reward"] == answers[2]["reward"] and final.meta["job"] == job_id
        assert final.meta["path"] == playground.models[2].path and "path" not in answers[2]  # paths stay on the server
        labels = {(lab.labeler_name, store_item_model(items, lab.item_id)): lab.data.thumb for lab in store.list_labels(campaign.id)}
        assert labels == {("ann", "ppo: final"): 1, ("ann", "ppo: reference"): 1, ("admin (playground)", "ppo: step 2"): 0}
        admin_labeler = store.labeler_by_name("admin (playground)")
        assert admin_labeler is not None and not admin_labeler.active

        export = [json.loads(line) for line in client.get(f"/api/campaigns/{campaign.id}/export", headers=admin).text.splitlines()]
        by_item = {row["item_id"]: (row["completion"], row["label"]) for row in export}
        assert by_item[final.external_id] == (answers[2]["text"], 1)
        assert by_item[items["ppo: step 2"].external_id] == (answers[1]["text"], 0)
        jobs = client.get("/api/jobs", headers=admin).json()
        assert jobs[0]["kind"] == "generate" and "playground: Say <b>hello</b>." in jobs[0]["title"]


def store_item_model(items: dict, item_id: int) -> str:
    return next(model for model, item in items.items() if item.id == item_id)


def test_the_playground_page_escapes_model_names(store, tmp_path):
    path = tmp_path / "pg.yaml"
    path.write_text('models:\n  - {name: "<script>x</script>", path: a, kl: 0}\n  - {name: mid, path: b, kl: 1}\n  - {name: end, path: c, kl: 2}\n')
    with TestClient(create_app(store, playground=load_playground(path))) as client:
        sign_in(client, ADMIN_TOKEN)
        page = client.get("/playground").text
        assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
        assert 'id="kl-slider"' in page and 'max="2"' in page
        assert 'href="/playground"' in client.get("/admin").text


def fake_personal_run(root: Path) -> Path:
    """A `tether personalize` output as it is left: the shared base, ann's adapter (changed weights), cy without one."""
    import torch

    from tether.config import LoRAConfig, ModelConfig
    from tether.models.load import apply_lora, load_causal_lm, save_causal_lm

    base = save_tiny_policy(root / "base", seed=0)
    model, tok = load_causal_lm(ModelConfig(name_or_path=str(base)), torch.device("cpu"))
    policy = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    run = root / "personal"
    save_causal_lm(policy, tok, run / "people" / "ann", merge=False)
    people = {"ann": {"adapter": "people/ann"}, "cy": {"adapter": None, "reason": "3 training examples"}}
    summary = {"policy": str(base), "people": people, "prompt_template": PERSONAL_TEMPLATE, "max_prompt_length": 48}
    (run / "personalize.json").write_text(json.dumps(summary))
    return run


PERSONAL_TEMPLATE = "Question: {prompt}\nAnswer:"  # what the fake run's adapters were "trained" with


def test_my_model_page_answers_with_the_shared_model_and_my_adapter(store, admin, tmp_path):
    from tether.feedback.export import ExportKind, export_by_labeler

    run = fake_personal_run(tmp_path)
    path = tmp_path / "playground.yaml"
    path.write_text(f"personal: {run.name}\ncampaign: my-thumbs\ngeneration: {{max_new_tokens: 8, temperature: 0.7}}\n")
    playground = load_playground(path)
    assert playground.personal == str(run) and playground.models == []
    with TestClient(create_app(store, playground=playground)) as client:
        ann, cy = make_labeler(client, admin, "ann"), make_labeler(client, admin, "cy")
        page = client.get("/my-model", headers=ann)
        assert page.status_code == 200 and "your model" in page.text and "yours (ann)" in page.text and 'data-mine="1"' in page.text
        assert 'href="/my-model"' in client.get("/queue", headers=ann).text
        cy_page = client.get("/my-model", headers=cy).text
        assert 'id="no-adapter"' in cy_page and "yours (cy)" not in cy_page
        assert client.get("/my-model", headers=admin).status_code == 404
        assert client.post("/api/playground/generate", json={"prompt": "hi", "mine": True}, headers=admin).status_code == 422

        job_id = client.post("/api/playground/generate", json={"prompt": "Say hello.", "mine": True}, headers=ann).json()["id"]
        assert run_worker(store, "w1", once=True) == 1
        done = client.get(f"/api/jobs/{job_id}", headers=ann).json()
        assert done["status"] == "done", done["error"]
        answers = {a["name"]: a["text"] for a in done["result"]["answers"]}
        assert list(answers) == ["shared model", "yours (ann)"] and answers["shared model"] != answers["yours (ann)"]
        # both models are prompted in the format the adapters were trained with, not the playground's default one
        params = JobQueue(store).get(job_id).params
        assert params["prompt_template"] == PERSONAL_TEMPLATE and params["max_prompt_length"] == 48
        from tether.config import GenerationConfig
        from tether.rollout.sample import sample_completions

        gen = GenerationConfig(max_new_tokens=8, temperature=0.7)
        assert sample_completions(str(run / "people" / "ann"), ["Say hello."], 1, gen, seed=0, prompt_template=PERSONAL_TEMPLATE,
                                  max_prompt_length=48)[0][0] == answers["yours (ann)"]
        for name, thumb in (("yours (ann)", 1), ("shared model", 0)):
            assert client.post("/api/playground/thumbs", json={"job_id": job_id, "model": name, "thumb": thumb}, headers=ann).status_code == 200

    # the thumbs are ann's own data: her file of the by-labeller export holds them, ready for the next `tether personalize`
    campaign = store.campaign_by_name("my-thumbs")
    export_by_labeler(campaign, store.list_items(campaign.id), store.list_labels(campaign.id), ExportKind.THUMBS, tmp_path / "people")
    rows = [json.loads(line) for line in (tmp_path / "people" / "my-thumbs" / "ann.jsonl").read_text().splitlines()]
    assert sorted((r["completion"], r["label"]) for r in rows) == sorted([(answers["yours (ann)"], 1), (answers["shared model"], 0)])


def test_a_personal_entry_must_be_a_personalize_run(tmp_path):
    path = tmp_path / "playground.yaml"
    (tmp_path / "empty").mkdir()
    path.write_text("personal: empty\n")
    with pytest.raises(ConfigError, match="personal: .*empty has no personalize.json"):
        load_playground(path)
