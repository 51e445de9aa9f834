"""`tether loop` on tiny models: two rounds with the `model` labeller, the skip-what-is-done resume, the judge rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tether.config import LoopConfig, validate
from tether.errors import ConfigError
from tether.loop import best_round, run_loop, stop_on_judge

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def loop_config(tiny_data, tiny_models, out, **top) -> LoopConfig:
    return validate(LoopConfig, {
        "policy": tiny_models["llama"], "data": {"train": str(tiny_data["prompts"]), "holdout_fraction": 0.25, "max_prompt_length": 32},
        "rounds": 2, "prompts_per_round": 4, "k": 3, "generation": {"max_new_tokens": 6},
        "labeler": {"kind": "model", "path": tiny_models["rm"], "max_length": 64},
        "reward_model": {"model": {"name_or_path": "tiny-bert"}, "data": {"max_length": 64, "holdout_fraction": 0.0}, "on_chance": "warn",
                         "train": {"max_steps": 2, "batch_size": 4, "device": "cpu"}},
        "ppo": {"reward_model": {"max_length": 64}, "generation": {"max_new_tokens": 6},
                "rollout": {"batch_size": 2, "num_epochs": 1, "num_minibatches": 1}, "train": {"max_steps": 2, "device": "cpu"}},
        "eval": {"max_prompts": 4, "generation": {"max_new_tokens": 6}},
        "output_dir": str(out), **top,
    })


@pytest.mark.slow
def test_two_rounds_with_the_model_labeller_then_a_rerun_skips_everything(tiny_data, tiny_models, tmp_path):
    cfg = loop_config(tiny_data, tiny_models, tmp_path / "loop")
    out = run_loop(cfg)
    summary = json.loads((out / "loop.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    r1, r2 = (out / "round-01", out / "round-02")
    # every round samples new prompts from the current policy: round 2 from round 1's PPO policy
    p1 = [json.loads(line)["prompt"] for line in (r1 / "prompts.jsonl").open()]
    p2 = [json.loads(line)["prompt"] for line in (r2 / "prompts.jsonl").open()]
    assert len(p1) == len(p2) == 4 and not set(p1) & set(p2)
    assert {json.loads(line)["model"] for line in (r2 / "samples.jsonl").open()} == {str(r1 / "ppo")}
    # pairs are tagged with their round, and round 2's reward model learns from both rounds, from round 1's weights
    pairs2 = [json.loads(line) for line in (r2 / "pairs.jsonl").open()]
    assert pairs2 and {p["round"] for p in pairs2} == {2} and all(p["margin"] > 0 for p in pairs2)
    rm2 = (r2 / "rm" / "config.yaml").read_text()
    assert str(r1 / "pairs.jsonl") in rm2 and str(r2 / "pairs.jsonl") in rm2 and str(r1 / "rm") in rm2
    # both rounds' evaluations compare with the same SFT answers, sampled once
    assert len(list((out / "sft_answers").iterdir())) == 1
    sft = [[json.loads(line)["baseline"] for line in (r / "eval" / "samples.jsonl").open()] for r in (r1, r2)]
    assert sft[0] and sft[0] == sft[1]
    assert summary["rounds"][1]["pairs_total"] == summary["rounds"][0]["pairs"] + summary["rounds"][1]["pairs"]
    # round 2's PPO starts from round 1's policy and is held to the SFT policy (kl_to: sft)
    ppo2 = yaml.safe_load((r2 / "ppo" / "config.yaml").read_text())
    assert ppo2["model"]["name_or_path"] == str(r1 / "ppo") and ppo2["reference"] == tiny_models["llama"]
    assert yaml.safe_load((r1 / "ppo" / "config.yaml").read_text())["reference"] is None
    # the evaluation is against the SFT policy, with the training reward model and the judge (the labeller's by default)
    ev = json.loads((r2 / "eval" / "eval.json").read_text())
    assert ev["baseline"]["path"] == tiny_models["llama"] and [m["path"] for m in ev["reward_models"]] == [str(r2 / "rm"), tiny_models["rm"]]
    assert 0.0 <= summary["rounds"][1]["judge_lc_win_rate"] <= 1.0
    # the judge is the labeller's model here, so it agrees with (almost) every pair it labelled
    assert summary["rounds"][1]["judge_agreement"] >= 0.9 and len(summary["rounds"][1]["judge_agreement_ci"]) == 2
    assert summary["judge"]["path"] == tiny_models["rm"] and summary["judge"]["independent"] is False
    assert "not independent" in (out / "report.html").read_text()
    done = json.loads((out / "DONE").read_text())
    best = max(summary["rounds"], key=lambda row: (row["judge_win_rate"], -row["round"]))
    assert done["policy"] == best["policy"] and done["best_round"] == best["round"] and done["last_policy"] == str(r2 / "ppo")
    assert "RLHF loop" in (out / "report.html").read_text()

    # run again: every step is done, nothing is trained or written again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts and p.name != "config.yaml"
              and p.parent != out}
    run_loop(cfg)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a third round continues the finished loop from where it stopped
    out3 = run_loop(cfg.model_copy(update={"rounds": 3, "eval": cfg.eval.model_copy(update={"patience": 5})}))
    rows = json.loads((out3 / "loop.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert {json.loads(line)["model"] for line in (out / "round-03" / "samples.jsonl").open()} == {str(r2 / "ppo")}


def test_a_different_loop_in_the_same_directory_is_refused(tiny_data, tiny_models, tmp_path):
    out = tmp_path / "loop"
    out.mkdir()
    (out / "config.yaml").write_text(loop_config(tiny_data, tiny_models, out, k=4).model_dump_json())
    with pytest.raises(ConfigError, match="holds a different loop"):
        run_loop(loop_config(tiny_data, tiny_models, out, k=3))


def test_a_pool_too_small_for_the_rounds_is_named(tiny_data, tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="2 rounds x prompts_per_round=100 need 200"):
        run_loop(loop_config(tiny_data, tiny_models, tmp_path / "loop", prompts_per_round=100))


def test_the_judge_rule_stops_when_the_judge_no_longer_improves():
    rows = [{"judge_win_rate": w} for w in (0.55, 0.62, 0.60)]
    assert stop_on_judge(rows[:2], patience=1) is None  # improved
    assert "not improved on 0.620 for 1 round" in stop_on_judge(rows, patience=1)
    assert stop_on_judge(rows, patience=2) is None  # 0.62 was an improvement within the last two
    assert stop_on_judge(rows[:1], patience=1) is None  # nothing to compare with


def test_the_loop_hands_on_the_judges_best_round_not_the_last():
    rows = [{"round": r, "policy": f"round-{r}", "judge_win_rate": w} for r, w in ((1, 0.55), (2, 0.62), (3, 0.60), (4, 0.62))]
    assert best_round(rows)["policy"] == "round-2"  # the best, and of two equals the earlier
    assert best_round(rows[:1])["policy"] == "round-1"


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_round_then_resume_ends_where_an_uninterrupted_loop_ends(tiny_data, tiny_models, tmp_path):
    """SIGKILL once round 2's pairs are written (its reward model is training), run again: the same final policy,
    bit for bit, and the same summary as a loop that was never interrupted."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = json.loads(loop_config(tiny_data, tiny_models, tmp_path / "unused").model_dump_json())
    raw.pop("output_dir")
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TETHER_CPU_BF16": "0"}

    def command(out):
        return [sys.executable, "-m", "tether.cli", "loop", "--config", str(path), f"output_dir={out}"]

    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker, deadline = tmp_path / "killed" / "round-02" / "pairs.jsonl", time.time() + 300
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the loop finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "round-02" / "ppo" / "DONE").exists()
    resumed = subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    def weights(out):
        return hashlib.sha256((out / "round-02" / "ppo" / "model.safetensors").read_bytes()).hexdigest()

    def rows(out):
        return json.loads((out / "loop.json").read_text().replace(str(out), "OUT"))

    assert weights(tmp_path / "killed") == weights(tmp_path / "full")
    assert rows(tmp_path / "killed") == rows(tmp_path / "full")


@pytest.mark.slow
def test_with_people_the_loop_creates_the_campaign_waits_and_trains_on_exactly_their_labels(tiny_data, tiny_models, tmp_path):
    """labeler.kind=human: round 1 creates a ranking campaign and stops, saying where to label; two labellers rank
    every item (through the store the app writes to); run again, the round's pairs are the campaign's consensus."""
    from tether.feedback.export import ExportKind, ExportMode, export_records
    from tether.loop import FeedbackPending
    from tether.storage import FeedbackStore, LabelData

    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    cfg = loop_config(tiny_data, tiny_models, tmp_path / "loop", rounds=1,
                      labeler={"kind": "human", "db": db, "labelers_per_item": 2, "url": "http://labels.example:8000"},
                      eval={"judge": tiny_models["rm"], "max_prompts": 4, "generation": {"max_new_tokens": 6}})
    with pytest.raises(FeedbackPending, match=r"campaign 'loop-round-01' at http://labels.example:8000 has 0 of 4 items"):
        run_loop(cfg)
    store = FeedbackStore(db)
    campaign = store.campaign_by_name("loop-round-01")
    assert campaign.n_items == 4 and campaign.labelers_per_item == 2
    for name in ("ana", "ben"):
        labeler = store.add_labeler(name).labeler
        while (task := store.next_task(campaign.id, labeler.id)) is not None:
            k = len(task.item.completions)
            ranks = list(range(1, k + 1)) if name == "ana" else [1] + list(range(2, k + 1))[::-1]  # they agree on the best only
            store.submit_label(task.assignment_id, labeler.id, LabelData(ranks=ranks, unusable=[False] * k))
    out = run_loop(cfg)
    expected = [(p.prompt, p.chosen, p.rejected) for p in export_records(
        campaign, store.list_items(campaign.id), store.list_labels(campaign.id), ExportKind.PAIRS, ExportMode.CONSENSUS)]
    pairs = [json.loads(line) for line in (out / "round-01" / "pairs.jsonl").open()]
    assert expected and [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == expected
    assert {p["round"] for p in pairs} == {1} and all(p["campaign"] == "loop-round-01" for p in pairs)
    assert str(out / "round-01" / "pairs.jsonl") in (out / "round-01" / "rm" / "config.yaml").read_text()
    row = json.loads((out / "loop.json").read_text())["rounds"][0]
    assert row["pairs"] == len(expected)
    assert json.loads((out / "loop.json").read_text())["judge"]["independent"] is True  # people label, a model judges
    assert 0.0 <= row["judge_agreement_ci"][0] <= row["judge_agreement"] <= row["judge_agreement_ci"][1] <= 1.0  # judge vs people


@pytest.mark.slow
def test_red_teaming_each_round_feeds_its_findings_into_the_next_rounds_prompts(tiny_data, tiny_models, tmp_path):
    from tether.loop import findings_prompts

    suites = [{"name": "advbench", "path": str(tiny_data["prompts"]), "max_prompts": 3},
              {"name": "xstest", "path": str(SHARED / "xstest_prompts" / "data.jsonl.gz"), "kind": "xstest", "max_prompts": 4}]
    cfg = loop_config(tiny_data, tiny_models, tmp_path / "loop", findings_per_round=2,
                      redteam={"suites": suites, "generation": {"max_new_tokens": 4, "do_sample": False}})
    out = run_loop(cfg)
    rows = json.loads((out / "loop.json").read_text())["rounds"]
    for row in rows:  # both policies under the same attacks, with intervals
        assert 0.0 <= row["sft_attack_success"] <= 1.0 and 0.0 <= row["policy_attack_success"] <= 1.0
        assert len(row["policy_attack_success_ci"]) == 2 and "policy_over_refusal" in row
    found = findings_prompts(json.loads((out / "round-01" / "redteam" / "redteam.json").read_text()), 2)
    round2 = [json.loads(line)["prompt"] for line in (out / "round-02" / "prompts.jsonl").open()]
    assert found and round2[4:] == [p for p in found if p not in round2[:4]]  # 4 new pool prompts, then the findings
    assert {json.loads(line)["prompt"] for line in (out / "round-02" / "samples.jsonl").open()} == set(round2)
    # round 2's red teaming measures neither model on a prompt PPO trained on: the findings are out of its suites
    attacked = {json.loads(line)["base_prompt"] for line in (out / "round-02" / "redteam" / "results.jsonl").open()}
    assert attacked and not attacked & set(round2)
    # the SFT policy answered each prompt once for both rounds: its round-2 answers are the cached round-1 ones
    cached = [json.loads(line) for line in (out / "redteam_answers.jsonl").open()]
    sft_prompts = [c["prompt"] for c in cached if c["model"] == cfg.policy]
    assert len(sft_prompts) == len(set(sft_prompts))
    results = [[json.loads(line) for line in (out / f"round-0{r}" / "redteam" / "results.jsonl").open()] for r in (1, 2)]
    answers = [{o["prompt"]: o["response"] for o in rs if o["model"] == "baseline"} for rs in results]
    assert set(answers[0]) & set(answers[1]) and set(answers[0]) | set(answers[1]) == set(sft_prompts)
    assert all(answers[0][p] == answers[1][p] for p in set(answers[0]) & set(answers[1]))


@pytest.mark.slow
def test_ai_feedback_labels_a_round_with_a_judge_model_under_the_constitution(tiny_data, tiny_models, tmp_path):
    from tether.config import LoopLabeler

    constitution = Path(__file__).resolve().parent.parent / "configs" / "constitution.yaml"
    cfg = loop_config(tiny_data, tiny_models, tmp_path / "loop", rounds=1,
                      labeler={"kind": "ai", "path": tiny_models["llama"], "constitution": str(constitution)},
                      eval={"judge": tiny_models["rm"], "max_prompts": 4, "generation": {"max_new_tokens": 6}})
    out = run_loop(cfg)
    pairs = [json.loads(line) for line in (out / "round-01" / "pairs.jsonl").open()]
    assert pairs and all(p["confidence"] > 0.5 and p["principle"] and p["round"] == 1 for p in pairs)
    assert json.loads((out / "loop.json").read_text())["rounds"][0]["pairs"] == len(pairs)
    with pytest.raises(ValueError, match="labeler.kind=ai needs labeler.constitution"):
        LoopLabeler(kind="ai", path=tiny_models["llama"])


@pytest.mark.slow
def test_a_reward_model_ensemble_warm_starts_member_by_member_and_ppo_optimises_its_conservative_score(tiny_data, tiny_models,
                                                                                                       tmp_path):
    """reward_model.ensemble_size=2 with the conservative combination (Coste et al. 2023): round 2's member i starts
    from round 1's member i, PPO scores with the ensemble, and the row's accuracy is the members' mean."""
    base = loop_config(tiny_data, tiny_models, tmp_path / "unused")
    rm = {**base.reward_model, "ensemble_size": 2, "ensemble_combine": "conservative", "ensemble_k": 1.0,
          "data": {"max_length": 64, "holdout_fraction": 0.3}}
    out = run_loop(loop_config(tiny_data, tiny_models, tmp_path / "loop", reward_model=rm))
    r1, r2 = out / "round-01", out / "round-02"
    manifest = json.loads((r2 / "rm" / "tether_ensemble.json").read_text())
    assert manifest["members"] == ["member-0", "member-1"] and manifest["combine"] == "conservative"
    for i in range(2):
        member = yaml.safe_load((r2 / "rm" / f"member-{i}" / "config.yaml").read_text())
        assert member["model"]["name_or_path"] == str(r1 / "rm" / f"member-{i}")
    assert yaml.safe_load((r2 / "ppo" / "config.yaml").read_text())["reward_model"]["path"] == str(r2 / "rm")
    accuracies = [json.loads((r2 / "rm" / f"member-{i}" / "DONE").read_text())["eval/accuracy"] for i in range(2)]
    row = json.loads((out / "loop.json").read_text())["rounds"][1]
    assert row["rm_eval_accuracy"] == pytest.approx(sum(accuracies) / 2)


def test_an_ensemble_cannot_warm_start_an_ensemble_of_another_size(tiny_models, tiny_data, tmp_path):
    from tether.config import RewardConfig
    from tether.models.reward import write_ensemble_manifest
    from tether.trainers.reward import train_reward

    write_ensemble_manifest(tmp_path / "ens", [tiny_models["rm"]] * 3)
    cfg = validate(RewardConfig, {"model": {"name_or_path": str(tmp_path / "ens")}, "data": {"train": str(tiny_data["prefs"])},
                                  "ensemble_size": 2, "output_dir": str(tmp_path / "rm")})
    with pytest.raises(ConfigError, match=r"ensemble of 3, but ensemble_size=2"):
        train_reward(cfg)


DPO = {"data": {"max_length": 64}, "dpo": {"beta": 0.5}, "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "device": "cpu"}}


@pytest.mark.slow
def test_with_trainer_dpo_each_round_trains_dpo_on_its_own_pairs_from_the_current_policy(tiny_data, tiny_models, tmp_path):
    """Iterative, on-policy DPO: round r's DPO starts from round r-1's policy (also its reference) and learns the pairs
    of the answers that policy gave, not earlier rounds' pairs; round 2 samples from round 1's DPO policy."""
    from safetensors.torch import load_file

    out = run_loop(loop_config(tiny_data, tiny_models, tmp_path / "loop", trainer="dpo", ppo={}, dpo=DPO, kl_to="round"))
    r1, r2 = out / "round-01", out / "round-02"
    assert not (r1 / "ppo").exists()
    dpo1, dpo2 = (yaml.safe_load((r / "dpo" / "config.yaml").read_text()) for r in (r1, r2))
    assert dpo1["model"]["name_or_path"] == tiny_models["llama"] and dpo2["model"]["name_or_path"] == str(r1 / "dpo")
    assert dpo1["data"]["train"] == str(r1 / "pairs.jsonl") and dpo2["data"]["train"] == str(r2 / "pairs.jsonl")
    assert dpo2["dpo"]["beta"] == 0.5 and dpo2["data"]["prompt_template"] == dpo1["data"]["prompt_template"]
    assert {json.loads(line)["model"] for line in (r2 / "samples.jsonl").open()} == {str(r1 / "dpo")}
    before, after = load_file(Path(tiny_models["llama"]) / "model.safetensors"), load_file(r1 / "dpo" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)  # DPO changed the policy
    rows = json.loads((out / "loop.json").read_text())["rounds"]
    assert [(r["trainer"], r["policy_steps"], r["policy"]) for r in rows] == [("dpo", 2, str(r1 / "dpo")), ("dpo", 2, str(r2 / "dpo"))]
    assert json.loads((out / "DONE").read_text())["policy"] in {str(r1 / "dpo"), str(r2 / "dpo")}


@pytest.mark.parametrize("top, key", [({"trainer": "dpo", "dpo": DPO, "kl_to": "round"}, "ppo: is not read with trainer=dpo"),
                                      ({"dpo": DPO}, "dpo: is not read with trainer=ppo"),
                                      ({"trainer": "dpo", "ppo": {}, "dpo": DPO}, "set kl_to=round")])
def test_a_trainer_reads_only_its_own_section(tiny_data, tiny_models, tmp_path, top, key):
    with pytest.raises(ConfigError, match=key):
        loop_config(tiny_data, tiny_models, tmp_path / "loop", **top)


@pytest.mark.parametrize("name, trainer", [("loop_tiny.yaml", "ppo"), ("loop_dpo_tiny.yaml", "dpo")])
def test_the_shipped_tiny_loops_are_valid(name, trainer):
    from tether.config import load_config

    cfg = load_config(LoopConfig, str(Path(__file__).resolve().parent.parent / "configs" / name))
    assert cfg.trainer == trainer and cfg.output_dir.startswith("runs/tiny/")


def test_a_policy_that_repeats_an_answer_makes_each_pair_once(tiny_data, tiny_models, tmp_path):
    """Two equal completions of a prompt (common at low temperature) must not make the same pair twice: the reward
    model's data check stops on a duplicate pair."""
    from tether.loop import label_with_model

    cfg = loop_config(tiny_data, tiny_models, tmp_path / "loop")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": "item-0", "prompt": "Tell me a story.", "completions": ["Once upon", "The end", "Once upon"],
                                   "model": "m"}) + "\n")
    n = label_with_model(cfg, samples, tmp_path / "pairs.jsonl", 1)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").open()]
    assert n == len(pairs) == 1 and {pairs[0]["chosen"], pairs[0]["rejected"]} == {"Once upon", "The end"}
