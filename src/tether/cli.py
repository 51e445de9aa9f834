"""`tether ...`: parse arguments -> build a config -> call the stage.

Each stage takes `--config FILE.yaml` and dotted overrides (`train.learning_rate=1e-5`). User errors
(bad config, bad data, missing model) print one line to stderr and exit 1; `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from tether.config import EvalConfig, GenerationConfig, describe, load_config, validate
from tether.errors import TetherError
from tether.stages import STAGES, TRAINERS, runner, schema


def runners() -> dict[str, Callable]:
    """Every stage's function, imported on first call, so `tether --help` and `tether label` stay light."""
    return {name: (lambda cfg, name=name: runner(name)(cfg)) for name in STAGES}


def _stage_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=STAGES[name].help, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key.path=value):\n" + "\n".join(describe(schema(name))),
    )
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-5")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="RLHF for language models: feedback, reward models, PPO, DPO.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline of stages (finished stages are skipped)")
    run.add_argument("pipeline")
    run.add_argument("overrides", nargs="*", help="STAGE.key=value, data_dir=..., output_root=..., plan=NAME (of the file's plans)")

    for name in ("pretrain", "sft", "ppo", "grpo"):  # rm and dpo below, with their `eval` subcommand
        _stage_parser(sub, name)
    for name in ("rm", "dpo"):
        p = _stage_parser(sub, name)
        p.add_argument("--model", help="with `eval`: the model directory")
        p.add_argument("--data", help="with `eval`: a preference file")
        p.add_argument("--json", action="store_true", help="with `eval`: print the result as JSON")
        p.add_argument("--report", help="with `eval`: also write an HTML report here")
        p.add_argument("--reference", help="with `dpo eval`: the reference model (default: the one recorded in the run)")
        p.add_argument("--batch-size", type=int, default=32)

    ev = _stage_parser(sub, "eval")
    ev.add_argument("--baseline")
    ev.add_argument("--policy")
    ev.add_argument("--prompts")
    ev.add_argument("--reward-model", action="append", dest="reward_models", help="may be given several times")
    ev.add_argument("--out", dest="output_dir")
    ev.add_argument("--train-metrics", help="metrics.jsonl of the PPO run (curves in the report)")
    ev.add_argument("--json", action="store_true")

    sample = sub.add_parser("sample", help="K sampled completions per prompt, written as a campaign file for labeling")
    sample.add_argument("--model", required=True)
    sample.add_argument("--prompts", required=True)
    sample.add_argument("--k", type=int, default=4)
    sample.add_argument("--out", required=True)
    sample.add_argument("--max-prompts", type=int)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--max-new-tokens", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)

    gen = sub.add_parser("generate", help="answer prompts with the shared policy or a person's adapter of a `tether personalize` run")
    gen.add_argument("--model", required=True, help="the output directory of `tether personalize` (holding personalize.json)")
    gen.add_argument("--adapter", action="append", default=None, metavar="NAME",
                     help="the person whose adapter answers (default: the shared policy); give it several times to answer "
                     "every prompt for each of them, in one batch")
    gen.add_argument("--prompt", action="append", default=None, help="a prompt (may be given several times)")
    gen.add_argument("--prompts", default=None, help="a JSONL file of {\"prompt\"} rows")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--json", action="store_true", help="print one JSON object per answer")

    for name in ("redteam", "cai", "loop", "personalize"):
        _stage_parser(sub, name).add_argument("--json", action="store_true", help="print the summary as JSON")

    sub.add_parser("label", help="the human feedback app: serve, import, export (see `tether label --help`)", add_help=False)
    return parser


def _extra_stage(args) -> int:
    out = runner(args.command)(load_config(schema(args.command), args.config, args.overrides))
    summary = STAGES[args.command].summary
    if args.json and summary and (out / summary).is_file():
        print((out / summary).read_text())
    else:
        print(out)
    return 0


def _eval_config(args) -> EvalConfig:
    from tether.config import apply_overrides, read_yaml

    data = read_yaml(args.config) if args.config else {}
    for key in ("baseline", "policy", "prompts", "reward_models", "output_dir", "train_metrics"):
        if getattr(args, key, None):
            data[key] = getattr(args, key)
    data.setdefault("output_dir", "runs/eval")
    data = apply_overrides(data, args.overrides, EvalConfig)
    return validate(EvalConfig, data, origin=args.config or "tether eval")


def _pairwise_eval(args) -> int:
    """`tether rm eval` and `tether dpo eval`: pairwise accuracy and diagnostics on a preference file."""
    from tether.eval.reward_eval import write_reward_report

    if not args.model or not args.data:
        raise TetherError(f"tether {args.command} eval needs --model DIR and --data FILE")
    if args.command == "rm":
        from tether.eval.reward_eval import evaluate_reward_model

        result = evaluate_reward_model(args.model, args.data, batch_size=args.batch_size)
    else:
        from tether.eval.dpo_eval import evaluate_implicit_reward

        result = evaluate_implicit_reward(args.model, args.data, reference=args.reference, batch_size=args.batch_size)
    if args.report:
        write_reward_report(args.report, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"accuracy {result['accuracy']:.4f} on {result['n']} pairs")
    return 0


def _sample(args) -> int:
    from tether.rollout.sample import sample_to_file

    gen = GenerationConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    n = sample_to_file(args.model, args.prompts, args.k, args.out, gen, max_prompts=args.max_prompts, seed=args.seed)
    print(f"wrote {n} items with {args.k} completions each to {args.out}")
    return 0


def _generate(args) -> int:
    import torch

    from tether.data.sources import load_prompts
    from tether.rollout.personal import PersonalPolicies

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += [p.prompt for p in load_prompts(args.prompts)]
    if not prompts:
        raise TetherError("tether generate needs --prompt TEXT or --prompts FILE")
    policies = PersonalPolicies(args.model)
    people = args.adapter or [None]
    for person in people:
        policies.adapter_of(person)  # an unknown name stops here, before any generation
        if person is not None and policies.people[person] is None:
            print(f"{person} has no adapter (too little data): the shared policy answers", file=sys.stderr)
    torch.manual_seed(args.seed)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature is not None, temperature=args.temperature or 1.0)
    requests = [(person, prompt) for person in people for prompt in prompts]
    for (person, prompt), answer in zip(requests, policies.answer(requests, gen)):
        if args.json:
            print(json.dumps({"person": person, "prompt": prompt, "answer": answer}, ensure_ascii=False))
        else:
            print(f"[{person or 'shared'}] {answer}")
    return 0


def dispatch(args, argv: list[str]) -> int:
    if args.command == "run":
        from tether.pipeline import run_pipeline

        outputs = run_pipeline(args.pipeline, args.overrides, runners())
        for out in outputs.values():
            for name in ("report.html", "eval.json"):
                if (out / name).is_file():
                    print(f"{name}: {out / name}")
        return 0
    if args.command in ("rm", "dpo") and args.overrides[:1] == ["eval"]:
        args.overrides = args.overrides[1:]
        return _pairwise_eval(args)
    if args.command in TRAINERS:
        out = runner(args.command)(load_config(schema(args.command), args.config, args.overrides))
        if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, the main process answers
            print(out)
        return 0
    if args.command == "eval":
        result = runner("eval")(_eval_config(args))
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        return 0
    if args.command == "sample":
        return _sample(args)
    if args.command == "generate":
        return _generate(args)
    if args.command in ("redteam", "cai", "loop", "personalize"):
        return _extra_stage(args)
    raise TetherError(f"unknown command {args.command}")


def _quiet_transformers() -> None:
    """Our own progress bars and messages replace transformers' shard bars and length warnings."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    rest = [a for a in argv if a != "--debug"]
    if rest[:1] == ["label"]:
        from tether.feedback.cli import main as label_main

        return label_main(rest[1:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _quiet_transformers()
    args = build_parser().parse_args(rest)
    try:
        return dispatch(args, argv)
    except TetherError as exc:
        if debug:
            raise
        print(f"tether: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
