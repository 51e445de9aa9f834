"""Personalisation measured with simulated people whose tastes differ.

Three people rank the same campaign through the feedback app's HTTP API (a FastAPI test client on a fresh SQLite
database), each by a rule of their own on the answers' text:
    plain       prefers answers in short words (fewer letters per word)
    fancy       prefers answers in long words: the exact opposite of plain
    impersonal  prefers answers that say less about the speaker (fewer I / me / my per word); ties are no pair
Their labels are exported by labeller (`tether label export --by-labeler`), `tether personalize` trains an adapter
for each (and the pooled adapter on everyone's pairs), and the adapters are measured on each person's held-out
pairs (prompts held out by hash: no adapter saw them). Then memory and the cost of switching:
    - bytes of the base's weights plus N adapters in memory, against N full copies;
    - the time to answer a batch of requests from several people (one mixed-adapter batch), against the same batch
      answered by the shared policy alone and against one batch per person.

    python bench/personal_preferences.py                     # SmolLM2-135M-Instruct as the shared policy
    python bench/personal_preferences.py --prompts 24 --out /tmp/personal
Every adapter's learning rate is chosen among --learning-rates on a validation share of its own training prompts.

Writes `bench/results/personal_preferences.json` (with --save) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from harness import timed  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ADMIN = "bench-admin-token"
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself)\b", re.IGNORECASE)


def letters_per_word(text: str) -> float:
    words = re.findall(r"[A-Za-z]+", text)
    return sum(map(len, words)) / len(words) if words else 0.0


def first_person_rate(text: str) -> float:
    words = re.findall(r"[A-Za-z']+", text)
    return len(FIRST_PERSON.findall(text)) / len(words) if words else 0.0


PEOPLE = {  # name -> score of an answer (higher = better)
    "plain": lambda t: -round(letters_per_word(t), 2),
    "fancy": lambda t: round(letters_per_word(t), 2),
    "impersonal": lambda t: -round(first_person_rate(t), 3),
}


def ranks_by(scores: list[float]) -> list[int]:
    """Rank 1 = best; equal scores share a rank (a tie, which makes no pair)."""
    return [1 + sum(other > s for other in scores) for s in scores]


def label_through_the_app(items: list[dict], db: Path) -> None:
    """Create the campaign and the three people through the API, and let each rank every item by their rule."""
    from fastapi.testclient import TestClient

    from tether.feedback.app import create_app
    from tether.storage import FeedbackStore

    store = FeedbackStore(f"sqlite:///{db}")
    store.set_admin_token(ADMIN)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(store)) as client:
        body = {"name": "tastes", "kind": "rank", "items": items, "labelers_per_item": len(PEOPLE)}
        campaign = client.post("/api/campaigns", json=body, headers=admin)
        campaign.raise_for_status()
        cid = campaign.json()["id"]
        for name, score in PEOPLE.items():
            made = client.post("/api/labelers", json={"name": name}, headers=admin)
            made.raise_for_status()
            me = {"Authorization": f"Bearer {made.json()['token']}"}
            while (task := client.get(f"/api/campaigns/{cid}/next", headers=me)).status_code == 200:
                t = task.json()
                scores = [0.0] * len(t["completions"])
                for c in t["completions"]:
                    scores[c["index"]] = score(c["text"])
                client.post(f"/api/assignments/{t['assignment_id']}/label", json={"ranks": ranks_by(scores), "tie_intended": True}, headers=me).raise_for_status()
    store.close()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=48, help="prompts of the campaign (AlpacaEval's, in file order)")
    parser.add_argument("--k", type=int, default=4, help="answers per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--template", default="chat", help="prompt template (chat: the tokenizer's chat template)")
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--learning-rates", default="1e-4,5e-4",
                        help="comma-separated learning rates searched for every adapter on a validation share of its training prompts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--refit", action="store_true", help="train the chosen learning rate again on all training prompts")
    parser.add_argument("--save", action="store_true", help="write bench/results/personal_preferences.json")
    args = parser.parse_args()

    import torch

    from tether.config import GenerationConfig, PersonalizeConfig, validate
    from tether.data.sources import load_prompts
    from tether.feedback.cli import main as label_main
    from tether.models.adapters import BASE
    from tether.personalize import run_personalize
    from tether.rollout.personal import PersonalPolicies
    from tether.rollout.sample import sample_completions

    out = Path(args.out or tempfile.mkdtemp(prefix="personal-"))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. the shared policy answers every prompt k times
    start = time.perf_counter()
    prompts = [p.prompt for p in load_prompts(str(SHARED / "alpaca_eval_prompts" / "data.jsonl.gz"))][: args.prompts]
    samples = out / "samples.json"
    if not samples.is_file():
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0)
        completions = sample_completions(args.model, prompts, args.k, gen, seed=0, prompt_template=args.template, max_prompt_length=128)
        samples.write_text(json.dumps(completions))
    completions = json.loads(samples.read_text())
    timings["sample_s"] = time.perf_counter() - start

    # 2. three people rank them in the app; 3. each one's labels exported to a file of their own
    db = out / "feedback.db"
    db.unlink(missing_ok=True)  # labelling is quick: always from a fresh database
    items = [{"prompt": p, "completions": c, "id": f"q{i}"} for i, (p, c) in enumerate(zip(prompts, completions))]
    label_through_the_app(items, db)
    if label_main(["export", "--campaign", "tastes", "--by-labeler", str(out / "by-labeler"), "--db", f"sqlite:///{db}"]) != 0:
        return 1

    # 4. an adapter per person, the pooled one, and their held-out accuracies
    start = time.perf_counter()
    cfg = validate(PersonalizeConfig, {
        "policy": args.model, "feedback": str(out / "by-labeler"), "min_examples": 16, "holdout_fraction": 0.25,
        "dpo": {"model": {"lora": {"r": 8, "alpha": 16}}, "data": {"max_length": 192, "max_prompt_length": 128, "prompt_template": args.template},
                "dpo": {"beta": 0.1}, "train": {"batch_size": 8, "epochs": args.epochs, "learning_rate": 5.0e-4, "eval_every": 1000}},
        "search": {"learning_rate": [float(x) for x in args.learning_rates.split(",")]}, "validation_fraction": 0.25, "refit": args.refit,
        "output_dir": str(out / "personal"),
    })
    run = run_personalize(cfg)
    timings["personalize_s"] = time.perf_counter() - start
    summary = json.loads((run / "personalize.json").read_text())

    # 5. memory and switching
    policies = PersonalPolicies(run)
    names = [n for n, a in policies.people.items() if a]
    base_bytes = sum(p.numel() * p.element_size() for n, p in policies.model.named_parameters() if "lora_" not in n)
    adapters_bytes = sum(p.numel() * p.element_size() for n, p in policies.model.named_parameters() if "lora_" in n)
    gen = GenerationConfig(do_sample=False, max_new_tokens=32, batch_size=64)
    asked = prompts[:4]
    requests = [(name, p) for p in asked for name in names]
    shared = [(None, p) for p in asked for _ in names]
    torch.manual_seed(0)
    t_mixed = timed(lambda: policies.answer(requests, gen), 3)
    t_shared = timed(lambda: policies.answer(shared, gen), 3)
    t_each = timed(lambda: [policies.answer([(name, p) for p in asked], gen) for name in names], 3)
    assert BASE not in names

    result = {
        "command": " ".join(["python bench/personal_preferences.py", *("DIR" if a == args.out else a for a in sys.argv[1:])]),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "model": args.model, "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens,
        "people": summary["people"], "accuracy": summary["accuracy"], "search": summary["search"],
        "memory": {"base_bytes": base_bytes, "adapters_bytes": adapters_bytes, "adapters": len(names),
                   "base_plus_adapters": base_bytes + adapters_bytes, "full_copies": base_bytes * len(names)},
        "switching": {"requests": len(requests), "mixed_batch_s": t_mixed, "shared_only_batch_s": t_shared,
                      "one_batch_per_person_s": t_each, "generation": {"greedy": True, "max_new_tokens": 32}},
        "timings": timings,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("people",)}, indent=1))
    if args.save:
        path = ROOT / "bench" / "results" / "personal_preferences.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
