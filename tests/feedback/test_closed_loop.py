"""The loop closed: labelers rank completions in the app, the export trains a reward model and a DPO policy."""

from __future__ import annotations

import json

from conftest import make_campaign, make_labeler

from tether.config import DPOConfig, RewardConfig
from tether.data.sources import load_preferences
from tether.trainers.dpo import train_dpo
from tether.trainers.reward import train_reward


def test_rankings_from_the_app_train_a_reward_model_and_dpo(client, admin, tmp_path):
    items = [
        {"prompt": f"question {i}", "completions": [f"a careful, kind answer {i}", f"rude reply {i}", f"meh {i}"], "id": f"q{i}"}
        for i in range(6)
    ]
    campaign = make_campaign(client, admin, items=items, labelers_per_item=2)
    for labeler in (make_labeler(client, admin, "ann"), make_labeler(client, admin, "bob")):
        while (r := client.get(f"/api/campaigns/{campaign['id']}/next", headers=labeler)).status_code == 200:
            task = r.json()
            # both labelers: careful > meh > rude, whatever order the app showed them in
            order = {"careful": 1, "meh": 2, "rude": 3}
            ranks = [0] * len(task["completions"])
            for c in task["completions"]:
                ranks[c["index"]] = next(v for k, v in order.items() if k in c["text"])
            assert client.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": ranks}, headers=labeler).status_code == 200

    export = tmp_path / "prefs.jsonl"
    export.write_text(client.get(f"/api/campaigns/{campaign['id']}/export", headers=admin).text)
    pairs = load_preferences(str(export))
    assert len(pairs) == 6 * 3 and all("careful" in p.chosen or "rude" in p.rejected for p in pairs)

    rm_dir = train_reward(RewardConfig(
        model={"name_or_path": "tiny-bert"}, data={"train": str(export), "max_length": 64},
        train={"max_steps": 3, "batch_size": 6}, output_dir=str(tmp_path / "rm"),
    ))
    assert (rm_dir / "tether_reward.json").is_file()
    assert json.loads((rm_dir / "DONE").read_text())["steps"] == 3

    dpo_dir = train_dpo(DPOConfig(
        model={"name_or_path": "tiny-llama"}, data={"train": str(export), "max_length": 64},
        train={"max_steps": 2, "batch_size": 4}, output_dir=str(tmp_path / "dpo"),
    ))
    assert (dpo_dir / "model.safetensors").is_file()
