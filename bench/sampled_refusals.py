"""How often does a policy refuse when sampled, at each temperature? The signal a harmlessness loop can reinforce.

A loop round labels K sampled answers per prompt; a labeller can only prefer a refusal where one was sampled. For
the first `--n` StrongREJECT requests (shuffled with seed 0; these are the loop's harmful training prompts), K
answers each at every temperature given, it prints the refusal rate (the string-match detector of `tether
redteam`), the prompts with at least one refusal among their K answers, and those with a refusal and an answer
(a pair a labeller could order). Nothing is trained; on a 2-core CPU a temperature takes about 1.5-2 minutes.

    python bench/sampled_refusals.py smollm2-135m-instruct --temperatures 1.0 0.7 0.4 --out bench/results/sampled_refusals.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a causal LM directory or alias (the loop's SFT policy)")
    ap.add_argument("--data", default=os.environ.get("TETHER_DATA_DIR", "../shared/data"), help="the shared data folder")
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--k", type=int, default=4, help="answers per prompt")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.4])
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from tether.config import GenerationConfig
    from tether.data.sources import load_prompts
    from tether.redteam.refusal import is_refusal_text
    from tether.rollout.sample import sample_completions

    prompts = [e.prompt for e in load_prompts(str(Path(args.data) / "strongreject_prompts" / "data.jsonl.gz"))]
    random.Random(0).shuffle(prompts)
    prompts = prompts[: args.n]
    results = []
    for temperature in args.temperatures:
        start = time.perf_counter()
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=temperature)
        answers = sample_completions(args.model, prompts, args.k, gen, seed=0, prompt_template="chat", max_prompt_length=128)
        refused = [[is_refusal_text(a) for a in per_prompt] for per_prompt in answers]
        row = {"temperature": temperature, "answers": args.k * len(prompts), "refusals": sum(map(sum, refused)),
               "prompts": len(prompts), "prompts_with_a_refusal": sum(any(r) for r in refused),
               "prompts_with_a_refusal_and_an_answer": sum(any(r) and not all(r) for r in refused),
               "seconds": round(time.perf_counter() - start, 1)}
        row["refusal_rate"] = round(row["refusals"] / row["answers"], 4)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "k": args.k, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
