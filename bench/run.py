"""tether vs Hugging Face TRL, side by side on this machine: runs every benchmark, writes results and docs.

    python bench/run.py                 # the full run (about an hour on 2 busy cores)
    python bench/run.py --quick         # a smoke run: tiny settings, one run per side
    python bench/run.py --only ppo dpo  # some benchmarks
    python bench/run.py --scaling-only  # only tether's PPO scaling curves

Each benchmark runs `repeats` times per side in fresh processes, alternating tether, baseline, tether,
baseline... so that both sides see the same machine load (recorded per run). The baseline is TRL (latest in
bench/.venv-trl, 1.12.0 for PPO in bench/.venv-trl112), or plain `model.generate` for generation (in tether's
venv). A side's time is the median of all its timed steps over its runs, as wall time and as the CPU time of
the process (steadier on a shared machine, see bench/harness.py); ratio = tether / baseline, below 1 when
tether is faster. Its peak memory is the median of the runs' peak RSS. MFU = counted model FLOPs per step /
CPU seconds per step / the matmul ceiling of the dtype (bench/matmul_ceiling.py, same thread count). Writes bench/results.json, docs/benchmarks.md (between its
generated-section markers) and docs/img/ppo_scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402

TRL_LATEST = BENCH / ".venv-trl" / "bin" / "python"
TRL_PPO = BENCH / ".venv-trl112" / "bin" / "python"
LOGS = harness.cache_dir() / "logs"

# name: (benchmark, settings, baseline)
FULL = {
    "ppo": ("ppo", {}, "trl112"),
    "ppo_lora": ("ppo", {"lora": True}, "trl112"),
    "grpo": ("grpo", {}, "trl"),
    "dpo": ("dpo", {}, "trl"),
    "rm": ("rm", {}, "trl"),
    "sft": ("sft", {}, "trl"),
    "dpo_large": ("dpo", {"model": "large", "warmup": 2, "steps": 4}, "trl"),
    "rm_large": ("rm", {"model": "large", "warmup": 2, "steps": 4}, "trl"),
    "sft_large": ("sft", {"model": "large", "warmup": 2, "steps": 4}, "trl"),
    "sft_bf16": ("sft", {"bf16": True}, "trl"),
    "dpo_bf16": ("dpo", {"bf16": True}, "trl"),
    "ppo_bf16": ("ppo", {"bf16": True}, "trl112"),
    "grpo_bf16": ("grpo", {"bf16": True}, "trl"),
    "generate_b8": ("generate", {"batch": 8}, "hf"),
    "generate_b32": ("generate", {"batch": 32}, "hf"),
    "generate_b8_logprobs": ("generate", {"batch": 8, "engine": "tether_logprobs"}, "hf"),
}
QUICK_SETTINGS = {
    "ppo": {"batch": 2, "new_tokens": 8, "epochs": 1, "minibatches": 1},
    "grpo": {"prompts": 2, "group": 2, "new_tokens": 8},
    "dpo": {"batch": 2},
    "rm": {"batch": 2},
    "sft": {"batch": 2},
    "generate": {"new_tokens": 8},
}
QUICK = ["ppo", "ppo_lora", "grpo", "dpo", "rm", "sft", "generate_b8"]
SCALING = {  # tether PPO iteration, one setting varied at a time from the `ppo` benchmark's defaults
    "batch": ("batch", [4, 8, 16]),
    "new_tokens": ("new_tokens", [16, 32, 64]),
    "model": ("model", ["small", "medium", "large"]),
}
BASELINE_LABEL = {"trl": "TRL (latest)", "trl112": "TRL 1.12.0", "hf": "transformers generate"}
GEN_BEGIN, GEN_END = "<!-- generated:results:begin -->", "<!-- generated:results:end -->"
SCALE_BEGIN, SCALE_END = "<!-- generated:scaling:begin -->", "<!-- generated:scaling:end -->"


def tether_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def worker_command(side: str, bench: str, settings: dict, out: Path, tether_py: str) -> list[str]:
    """The command of one worker run; `side` is tether, hf, trl or trl112."""
    if side == "tether":
        return [tether_py, str(BENCH / "worker_tether.py"), bench, json.dumps(settings), "--out", str(out)]
    if side == "hf":
        return [tether_py, str(BENCH / "worker_tether.py"), bench, json.dumps({**settings, "engine": "hf"}), "--out", str(out)]
    py = TRL_PPO if side == "trl112" else TRL_LATEST
    return [str(py), str(BENCH / "worker_trl.py"), bench, json.dumps(settings), "--out", str(out)]


def run_worker(side: str, bench: str, settings: dict, tag: str, tether_py: str, timeout: int = 3600) -> dict:
    """Run one worker in a fresh process; its JSON record, or {"error": ...}."""
    LOGS.mkdir(parents=True, exist_ok=True)
    out, log = LOGS / f"{tag}.json", LOGS / f"{tag}.log"
    out.unlink(missing_ok=True)
    threads = str(settings.get("threads", 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()
    t = time.time()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(worker_command(side, bench, settings, out, tether_py), stdout=fh, stderr=subprocess.STDOUT,
                                env=env, timeout=timeout, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not out.is_file():
        tail = log.read_text().splitlines()[-5:]
        print(f"  {tag}: FAILED ({rc}); see {log}: {' | '.join(tail)}", flush=True)
        return {"error": f"exit {rc}", "log": str(log)}
    rec = json.loads(out.read_text())
    rec["loadavg_before"] = load_before
    rec["wall_s"] = round(time.time() - t, 1)
    print(f"  {tag}: median {rec['median_s']:.3f} s/step ({rec['median_cpu_s']:.3f} s CPU), peak {rec['peak_rss_mb']:.0f} MB, "
          f"load {load_before[0]:.1f}->{rec['loadavg'][0]:.1f}, wall {rec['wall_s']} s", flush=True)
    return rec


def side_summary(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    steps = [s for r in ok for s in r["step_s"]]
    cpu = [s for r in ok for s in r["step_cpu_s"]]
    out = {
        "s": statistics.median(steps),
        "cpu_s": statistics.median(cpu),
        "peak_mb": statistics.median(r["peak_rss_mb"] for r in ok),
        "flops_per_step": statistics.median(r["per_step"].get("flops", 0.0) for r in ok),
        "tokens_per_step": statistics.median(r["tokens_per_step"] for r in ok),
        "per_step": ok[0]["per_step"],
        "step_s": [r["step_s"] for r in ok],
        "step_cpu_s": [r["step_cpu_s"] for r in ok],
        "loadavg": [r["loadavg"][0] for r in ok],
        "versions": ok[0]["versions"],
    }
    if "generated_tokens_per_step" in ok[0]:
        tokens = statistics.median(r["generated_tokens_per_step"] for r in ok)
        out["tokens_per_s"], out["tokens_per_cpu_s"] = tokens / out["s"], tokens / out["cpu_s"]
    return out


def combine(name: str, bench: str, baseline: str, settings: dict, tether_runs: list[dict], base_runs: list[dict], ceiling: dict | None) -> dict:
    """One results.json record: both sides' median step time, their ratio, peak memory and MFU."""
    t, b = side_summary(tether_runs), side_summary(base_runs)
    rec = {
        "name": name,
        "benchmark": bench,
        "baseline": BASELINE_LABEL[baseline],
        "settings": settings,
        "tether_s": t and t["s"],
        "trl_s": b and b["s"],
        "ratio": (t["s"] / b["s"]) if t and b else None,
        "tether_cpu_s": t and t["cpu_s"],
        "trl_cpu_s": b and b["cpu_s"],
        "cpu_ratio": (t["cpu_s"] / b["cpu_s"]) if t and b else None,
        "tether_peak_mb": t and t["peak_mb"],
        "trl_peak_mb": b and b["peak_mb"],
        "tether_mfu": None,
        "trl_mfu": None,
        "tether": t,
        "trl": b,
        "errors": [r for r in tether_runs + base_runs if "error" in r],
    }
    set_mfu(rec, ceiling)
    if bench == "generate":
        for key in ("tokens_per_s", "tokens_per_cpu_s"):
            rec[f"tether_{key}"], rec[f"trl_{key}"] = t and t.get(key), b and b.get(key)
    return rec


def set_mfu(rec: dict, ceiling: dict | None) -> None:
    """MFU of both sides of a record: model FLOPs per step / CPU seconds per step / the dtype's matmul ceiling.

    Per second of CPU time, because the ceiling is a best-of rate, i.e. one measured undisturbed.
    """
    peak = (ceiling or {}).get("bfloat16" if rec["settings"].get("bf16") else "float32")
    for side in ("tether", "trl"):
        summary = rec[side]
        ok = summary is not None and peak and summary["flops_per_step"]
        rec[f"{side}_mfu"] = summary["flops_per_step"] / summary["cpu_s"] / (peak * 1e12) if ok else None


def full_settings(bench: str, settings: dict, quick: bool, threads: int) -> dict:
    s = {"threads": threads, **settings}
    if quick:
        s = {**s, **QUICK_SETTINGS[bench], "warmup": 1, "steps": 1, "model": "small"}
    return s


def run_benchmarks(names: list[str], args, ceiling: dict | None, tether_py: str) -> list[dict]:
    records = []
    for name in names:
        bench, settings, baseline = FULL[name]
        s = full_settings(bench, settings, args.quick, args.threads)
        print(f"{name}: {json.dumps(s)}", flush=True)
        t_runs, b_runs = [], []
        for i in range(args.repeats):
            t_runs.append(run_worker("tether", bench, s, f"{name}-tether-{i}", tether_py))
            if not args.no_trl:
                b_runs.append(run_worker(baseline, bench, s, f"{name}-{baseline}-{i}", tether_py))
        records.append(combine(name, bench, baseline, s, t_runs, b_runs, ceiling))
    return records


def run_scaling(args, tether_py: str) -> list[dict]:
    points = []
    base = {"threads": args.threads, "warmup": 1, "steps": 3}
    for axis, (key, values) in SCALING.items():
        for v in values:
            s = {**base, key: v}
            rec = run_worker("tether", "ppo", s, f"scaling-{axis}-{v}", tether_py)
            points.append({"axis": axis, "value": v, "settings": s,
                           "s": None if "error" in rec else rec["median_s"],
                           "cpu_s": None if "error" in rec else rec["median_cpu_s"],
                           "peak_mb": None if "error" in rec else rec["peak_rss_mb"],
                           "loadavg": None if "error" in rec else rec["loadavg"][0]})
    return points


def plot_scaling(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    titles = {"batch": "prompts per rollout", "new_tokens": "new tokens per response", "model": "model size"}
    for ax, axis in zip(axes, SCALING):
        pts = [p for p in points if p["axis"] == axis and p["s"] is not None]
        ax.plot([str(p["value"]) for p in pts], [p["cpu_s"] for p in pts], marker="o", label="CPU time")
        ax.plot([str(p["value"]) for p in pts], [p["s"] for p in pts], marker="s", ls="--", label="wall time")
        ax.legend()
        ax.set_xlabel(titles[axis])
        ax.set_ylabel("seconds per PPO iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("tether PPO iteration time (1 CPU thread; others at the ppo benchmark's defaults)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def fmt(x, spec=".2f", none="n/a") -> str:
    return none if x is None else format(x, spec)


def results_table(records: list[dict], ceiling: dict | None, threads: int) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}, {threads} torch thread(s) per process. "
        f"Matmul ceiling: {fmt(ceiling and ceiling['float32'] * 1000, '.1f')} GFLOP/s fp32, "
        f"{fmt(ceiling and ceiling['bfloat16'] * 1000, '.1f')} GFLOP/s bf16.",
        "",
        "Times are medians per step; ratio = tether / baseline (below 1: tether is faster). CPU = CPU time of the",
        "process per step, wall = wall-clock time per step; load = the 1-minute load average during the runs.",
        "",
        "| benchmark | baseline | tether CPU s | baseline CPU s | CPU ratio | tether wall s | baseline wall s | wall ratio | tether peak MB | baseline peak MB | tether MFU | baseline MFU | tokens/step (tether / baseline) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        t, b = r["tether"] or {}, r["trl"] or {}
        loads = (t.get("loadavg") or []) + (b.get("loadavg") or [])
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"
        lines.append(
            f"| {r['name']} | {r['baseline']} | {fmt(r['tether_cpu_s'], '.3f')} | {fmt(r['trl_cpu_s'], '.3f')} | "
            f"**{fmt(r['cpu_ratio'])}** | {fmt(r['tether_s'], '.3f')} | {fmt(r['trl_s'], '.3f')} | {fmt(r['ratio'])} | "
            f"{fmt(r['tether_peak_mb'], '.0f')} | {fmt(r['trl_peak_mb'], '.0f')} | "
            f"{fmt(r['tether_mfu'] and r['tether_mfu'] * 100, '.1f')}% | {fmt(r['trl_mfu'] and r['trl_mfu'] * 100, '.1f')}% | "
            f"{fmt(t.get('tokens_per_step'), '.0f')} / {fmt(b.get('tokens_per_step'), '.0f')} | {load} |"
        )
    gen = [r for r in records if r["benchmark"] == "generate"]
    if gen:
        lines += ["", "| generation | tether tokens per CPU s | generate tokens per CPU s | tether tokens/s (wall) | generate tokens/s (wall) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {fmt(r['tether_tokens_per_cpu_s'], '.0f')} | {fmt(r['trl_tokens_per_cpu_s'], '.0f')} | "
                  f"{fmt(r['tether_tokens_per_s'], '.0f')} | {fmt(r['trl_tokens_per_s'], '.0f')} |" for r in gen]
    return "\n".join(lines)


def scaling_table(points: list[dict]) -> str:
    lines = ["![tether PPO scaling](img/ppo_scaling.png)", "",
             "| varied | value | CPU s / iteration | wall s / iteration | peak MB | load |", "|---|---|---|---|---|---|"]
    lines += [f"| {p['axis']} | {p['value']} | {fmt(p.get('cpu_s'), '.2f')} | {fmt(p['s'], '.2f')} | {fmt(p['peak_mb'], '.0f')} | "
              f"{fmt(p['loadavg'], '.1f')} |" for p in points]
    return "\n".join(lines)


def replace_section(text: str, begin: str, end: str, body: str) -> str:
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    return text.rstrip() + f"\n\n{begin}\n{body}\n{end}\n"


def write_docs(records: list[dict] | None, points: list[dict] | None, ceiling: dict | None, threads: int) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.is_file() else "# Benchmarks: tether vs TRL\n"
    if records is not None:
        text = replace_section(text, GEN_BEGIN, GEN_END, results_table(records, ceiling, threads))
    if points is not None:
        text = replace_section(text, SCALE_BEGIN, SCALE_END, scaling_table(points))
    doc.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, one run per side, no scaling curves")
    ap.add_argument("--only", nargs="+", choices=sorted(FULL), help="run only these benchmarks")
    ap.add_argument("--repeats", type=int, help="runs per side (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    ap.add_argument("--no-trl", action="store_true", help="tether side only")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--scaling-only", action="store_true")
    ap.add_argument("--out", help="default bench/results.json (quick runs: bench/.cache/results_quick.json)")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.out = args.out or str(harness.cache_dir() / "results_quick.json" if args.quick else BENCH / "results.json")
    tether_py = tether_python()
    missing = [str(p) for p in (TRL_LATEST, TRL_PPO) if not p.exists()]
    if missing and not args.no_trl:
        raise SystemExit(f"TRL venvs missing ({', '.join(missing)}): run `bash bench/setup_trl.sh`, or pass --no-trl")
    subprocess.run([tether_py, str(BENCH / "prepare.py")], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})

    result = {"quick": args.quick, "threads": args.threads, "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    out = Path(args.out)
    if out.is_file() and not args.quick:
        old = json.loads(out.read_text())
        result.update({k: old[k] for k in ("records", "scaling", "ceiling") if k in old and not old.get("quick")})
    ceiling = None
    if not args.scaling_only:
        from matmul_ceiling import measure

        print("matmul ceiling ...", flush=True)
        c = measure(args.threads, repeats=2 if args.quick else 5)
        ceiling = c["ceiling_tflops"]
        result["ceiling"] = c
        names = args.only or (QUICK if args.quick else list(FULL))
        new = run_benchmarks(names, args, ceiling, tether_py)
        kept = [r for r in result.get("records", []) if r["name"] not in names] if args.only else []
        result["records"] = [r for r in kept + new if r["name"] in FULL]
        result["records"].sort(key=lambda r: list(FULL).index(r["name"]))
        for r in result["records"]:  # one ceiling for every row, the latest
            set_mfu(r, ceiling)
    if not (args.quick or args.no_scaling or args.only):
        result["scaling"] = run_scaling(args, tether_py)
        plot_scaling(result["scaling"], ROOT / "docs" / "img" / "ppo_scaling.png")
    result["machine"]["loadavg_end"] = os.getloadavg()
    out.write_text(json.dumps(result, indent=1))
    if not args.no_docs and not args.quick:
        ceiling = ceiling or result.get("ceiling", {}).get("ceiling_tflops")
        write_docs(result.get("records"), result.get("scaling"), ceiling, args.threads)
    for r in result.get("records", []):
        print(f"{r['name']:>22}: tether {fmt(r['tether_cpu_s'], '.3f')} s CPU, {r['baseline']} {fmt(r['trl_cpu_s'], '.3f')} s CPU, "
              f"CPU ratio {fmt(r['cpu_ratio'])}, wall ratio {fmt(r['ratio'])}, "
              f"peak {fmt(r['tether_peak_mb'], '.0f')} / {fmt(r['trl_peak_mb'], '.0f')} MB")


if __name__ == "__main__":
    main()
