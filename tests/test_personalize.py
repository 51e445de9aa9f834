"""`tether personalize` on a tiny model: two people who disagree, one with too little data, thumbs through KTO."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tether.config import PersonalizeConfig, validate
from tether.errors import ConfigError
from tether.feedback.export import ExportKind, export_by_labeler
from tether.models.load import save_causal_lm
from tether.models.tiny import tiny_causal_lm
from tether.personalize import POOLED, SHARED, run_personalize
from tether.storage import FeedbackStore, LabelData, NewItem, TaskKind

N_PROMPTS = 48


def _label_all(store, campaign, name: str, answer) -> None:
    person = store.add_labeler(name).labeler
    while (task := store.next_task(campaign.id, person.id)) is not None:
        store.submit_label(task.assignment_id, person.id, answer(task.item))


@pytest.fixture(scope="module")
def people_feedback(tmp_path_factory):
    """A saved tiny base, and a rank campaign of 48 prompts x 2 answers ('yes ...' and 'no ...') labelled by ann (yes
    first), bo (no first) and cy (3 items only), exported by labeller."""
    root = tmp_path_factory.mktemp("people")
    model, tok = tiny_causal_lm("llama", seed=0)
    save_causal_lm(model, tok, root / "base")
    store = FeedbackStore(f"sqlite:///{root / 'feedback.db'}")
    items = [NewItem(f"question {i}: {'abc'[i % 3] * (1 + i % 5)}?", [f"yes {i % 7}", f"no {i % 7}"]) for i in range(N_PROMPTS)]
    campaign = store.create_campaign("prefs", TaskKind.RANK, items, labelers_per_item=3)
    _label_all(store, campaign, "ann", lambda item: LabelData(ranks=[1, 2]))
    _label_all(store, campaign, "bo", lambda item: LabelData(ranks=[2, 1]))
    cy = store.add_labeler("cy").labeler
    for _ in range(3):
        task = store.next_task(campaign.id, cy.id)
        store.submit_label(task.assignment_id, cy.id, LabelData(ranks=[1, 2]))
    export_by_labeler(campaign, store.list_items(campaign.id), store.list_labels(campaign.id), ExportKind.PAIRS, root / "by-labeler")
    return root


def _config(root, out, **extra) -> PersonalizeConfig:
    return validate(PersonalizeConfig, {
        "policy": str(root / "base"), "feedback": str(root / "by-labeler"), "min_examples": 8, "holdout_fraction": 0.25,
        "dpo": {"data": {"max_length": 64, "max_prompt_length": 32}, "dpo": {"beta": 0.5},
                "train": {"batch_size": 8, "epochs": 3, "learning_rate": 5.0e-3, "device": "cpu"}},
        "output_dir": str(out), **extra,
    })


@pytest.fixture(scope="module")
def personalized(people_feedback, tmp_path_factory):
    return run_personalize(_config(people_feedback, tmp_path_factory.mktemp("run") / "personal"))


def test_each_adapter_learns_its_persons_held_out_preferences_and_the_crowds_does_not(personalized):
    summary = json.loads((personalized / "personalize.json").read_text())
    acc = summary["accuracy"]
    for name in ("ann", "bo"):
        own, pooled = acc[name][name], acc[POOLED][name]
        assert own["n"] >= 6 and own["accuracy"] >= 0.9 and own["ci"][0] > 0.5
        assert pooled["accuracy"] < own["accuracy"]
    # the two adapters disagree where the two people do: each one gets the other's held-out pairs wrong
    assert acc["ann"]["bo"]["accuracy"] <= 0.1 and acc["bo"]["ann"]["accuracy"] <= 0.1
    # the shared policy's own choice is the same for both people's (opposite) pairs: their accuracies sum to 1
    assert acc[SHARED]["ann"]["accuracy"] + acc[SHARED]["bo"]["accuracy"] == pytest.approx(1.0)


def test_too_little_data_falls_back_to_the_shared_policy_and_adapters_are_small(personalized):
    summary = json.loads((personalized / "personalize.json").read_text())
    cy = summary["people"]["cy"]
    assert cy["adapter"] is None and "fewer than min_examples=8: served the shared policy" in cy["reason"]
    assert "cy" not in summary["accuracy"]
    ann = summary["people"]["ann"]
    assert ann["adapter"] == "people/ann" and ann["kind"] == "pairs" and ann["train_examples"] + ann["heldout_pairs"] == N_PROMPTS
    assert (personalized / "people" / "ann" / "adapter" / "adapter_config.json").is_file()
    assert not list((personalized / "people" / "ann").glob("*.safetensors"))  # no copy of the base
    assert 0 < ann["adapter_bytes"] < summary["base_bytes"]


def test_a_second_run_trains_nothing_again(personalized, people_feedback, monkeypatch):
    import tether.trainers.dpo as dpo

    monkeypatch.setattr(dpo, "train_dpo", lambda cfg: pytest.fail("trained again"))
    before = json.loads((personalized / "personalize.json").read_text())
    run_personalize(_config(people_feedback, personalized))
    assert json.loads((personalized / "personalize.json").read_text()) == before


def test_thumbs_train_with_kto(people_feedback, tmp_path):
    store = FeedbackStore(f"sqlite:///{people_feedback / 'feedback.db'}")
    items = [NewItem(f"thumbs {i}?", [f"{'yes' if i % 2 else 'no'} {i}"]) for i in range(24)]
    campaign = store.create_campaign(f"thumbs-{tmp_path.name}", TaskKind.THUMBS, items)
    dee = store.add_labeler(f"dee-{tmp_path.name}").labeler
    while (task := store.next_task(campaign.id, dee.id)) is not None:
        store.submit_label(task.assignment_id, dee.id, LabelData(thumb=int(task.item.completions[0].startswith("yes"))))
    feedback = tmp_path / "by-labeler"
    shutil.copytree(people_feedback / "by-labeler", feedback)  # ann's pairs are there already
    export_by_labeler(campaign, store.list_items(campaign.id), store.list_labels(campaign.id), ExportKind.THUMBS, feedback)
    dee = f"dee-{tmp_path.name}"
    cfg = _config(people_feedback, tmp_path / "out", feedback=str(feedback), people=["ann", dee])
    summary = json.loads((run_personalize(cfg) / "personalize.json").read_text())
    person = summary["people"][dee]
    assert person["kind"] == "kto" and person["adapter"] is not None and person["heldout_pairs"] == 0
    assert "loss: kto" in (tmp_path / "out" / person["adapter"] / "config.yaml").read_text()
    # the pooled adapter learns from both as thumbs: dee's, and ann's pairs as a thumb up and a thumb down each
    pooled = (tmp_path / "out" / "pooled" / "config.yaml").read_text()
    assert "loss: kto" in pooled and "ann.kto.jsonl" in pooled and summary["people"]["ann"]["kind"] == "pairs"


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"people": ["ann", "zed"]}, "people: zed not in"),
        ({"policy": "tiny-llama"}, "is built at random on each load"),
        ({"dpo": {"dpo": {"loss": "kto"}}}, "a person's pairs train with DPO"),
        ({"dpo": {"train": {"nope": 1}}}, "unknown config key 'train.nope'"),
        ({"search": {"beta": [0.1, 0.0]}}, "every value must be > 0"),
        ({"search": {"momentum": [0.9]}}, "momentum"),
    ],
)
def test_config_errors_before_any_training(people_feedback, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        run_personalize(_config(people_feedback, tmp_path / "out", **extra))
    assert not (tmp_path / "out" / "people").exists()


def test_a_missing_index_says_how_to_write_one(people_feedback, tmp_path):
    with pytest.raises(ConfigError, match="labelers.json not found .*--by-labeler"):
        run_personalize(_config(people_feedback, tmp_path / "out", feedback=str(tmp_path)))


def test_one_mixed_batch_answers_as_each_adapter_alone(personalized):
    from tether.config import GenerationConfig, ModelConfig
    from tether.models.load import load_causal_lm
    from tether.rollout.generate import decode_responses, generate
    from tether.data.tokenize import tokenize_prompts
    from tether.rollout.personal import PersonalPolicies

    policies = PersonalPolicies(personalized, device="cpu")
    gen = GenerationConfig(do_sample=False, max_new_tokens=8, batch_size=8)
    prompts = ["question 1: a?", "question 12: cc?", "hello there"]
    people = ["ann", "bo", "cy", None]  # cy has no adapter: the shared policy answers, as for None
    requests = [(person, prompt) for prompt in prompts for person in people]
    mixed = policies.answer(requests, gen)
    for person in people:
        alone = policies.answer([(person, prompt) for prompt in prompts], gen)
        assert alone == [mixed[i * len(people) + people.index(person)] for i in range(len(prompts))]
    # the shared policy's answers are the base model's own
    base, tok = load_causal_lm(ModelConfig(name_or_path=policies.policy), torch.device("cpu"))
    out = generate(base, tok, tokenize_prompts(prompts, tok, policies.template, policies.max_prompt_length), gen, torch.device("cpu"))
    assert decode_responses(tok, out.responses, out.response_mask) == [mixed[i * len(people) + 3] for i in range(len(prompts))]
    # in one forward pass, each row gets its own adapter's logits, and the two people's adapters differ
    ids = torch.tensor(tokenize_prompts(["question 1: a?"] * 2, tok, policies.template, 32))
    with torch.no_grad():
        logits = policies.model(input_ids=ids, adapter_names=["ann", "bo"]).logits[:, -1]  # (2, V)
        for row, name in enumerate(["ann", "bo"]):
            policies.model.set_adapter(name)
            assert torch.allclose(logits[row], policies.model(input_ids=ids[:1]).logits[0, -1], atol=1e-5)
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="no person 'zed' in this run"):
        policies.answer([("zed", "hi")], gen)
    assert policies.answer([("zed", "hi")], gen, strict=False) == policies.answer([(None, "hi")], gen)


def test_generate_command_answers_for_each_person(personalized, capsys):
    from tether.cli import main

    argv = ["generate", "--model", str(personalized), "--prompt", "question 1: a?", "--max-new-tokens", "4", "--json"]
    assert main([*argv, "--adapter", "ann", "--adapter", "cy"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["person"] for r in rows] == ["ann", "cy"] and all(r["prompt"] == "question 1: a?" for r in rows)
    assert "cy has no adapter (too little data): the shared policy answers" in captured.err
    assert main([*argv, "--adapter", "zed"]) == 1
    assert "no person 'zed' in this run" in capsys.readouterr().err
    assert main(["generate", "--model", str(personalized.parent), "--prompt", "x"]) == 1
    assert "no personalize.json" in capsys.readouterr().err


def test_a_labeller_named_like_a_model_of_the_table_is_refused(people_feedback, tmp_path):
    (tmp_path / "labelers.json").write_text(json.dumps({"files": [
        {"labeler": "pooled", "campaign": "c", "kind": "pairs", "path": "c/pooled.jsonl", "records": 1}]}))
    with pytest.raises(ConfigError, match="a labeller named 'pooled' would share a name"):
        run_personalize(_config(people_feedback, tmp_path / "out", feedback=str(tmp_path)))


def test_search_candidates_are_every_combination_in_the_order_given():
    from tether.config import PersonalSearch

    assert PersonalSearch().candidates() == [{}]
    assert PersonalSearch(learning_rate=[1e-4, 5e-4], epochs=[1, 2]).candidates() == [
        {"learning_rate": 1e-4, "epochs": 1}, {"learning_rate": 1e-4, "epochs": 2},
        {"learning_rate": 5e-4, "epochs": 1}, {"learning_rate": 5e-4, "epochs": 2}]


def _prompts(path) -> set[str]:
    return {json.loads(line)["prompt"] for line in path.read_text().splitlines()}


@pytest.mark.parametrize("refit", [True, False])
def test_the_search_chooses_on_a_validation_share_of_the_training_prompts(people_feedback, tmp_path, refit):
    from tether.data.sources import in_holdout

    # a learning rate too small to move the adapter, listed first, against one that learns
    cfg = _config(people_feedback, tmp_path / "out", people=["ann"], pooled=False, refit=refit,
                  search={"learning_rate": [1e-9, 5e-3]}, validation_fraction=0.3)
    summary = json.loads((run_personalize(cfg) / "personalize.json").read_text())
    search = summary["search"]["ann"]
    tried = search["tried"]
    assert [t["learning_rate"] for t in tried] == [1e-9, 5e-3] and search["chosen"] == 1
    assert tried[1]["accuracy"] >= 0.9 and tried[0]["accuracy"] < tried[1]["accuracy"]
    # the candidates trained on the fit share only, and were scored on the validation share: disjoint prompts, none of
    # them held out
    data = tmp_path / "out" / "data"
    fit, validation = _prompts(data / "ann.fit.jsonl"), _prompts(data / "ann.validation.jsonl")
    assert search["validation_examples"] == len(validation) >= 3 and len(fit) >= 12 and not fit & validation
    assert not any(in_holdout(p, 0.25) for p in fit | validation)
    candidate = (tmp_path / "out" / tried[1]["run"] / "config.yaml").read_text()
    assert "ann.fit.jsonl" in candidate and "ann.validation.jsonl" in candidate and "learning_rate: 0.005" in candidate
    adapter = summary["people"]["ann"]["adapter"]
    if refit:  # the chosen value, trained again on all of ann's training prompts
        assert adapter == "people/ann"
        final = (tmp_path / "out" / adapter / "config.yaml").read_text()
        assert "learning_rate: 0.005" in final and "fit.jsonl" not in final and "holdout_fraction: 0.25" in final
    else:
        assert adapter == tried[1]["run"] == "people/ann/search/1"
    own = summary["accuracy"]["ann"]["ann"]
    assert own["accuracy"] >= 0.9
