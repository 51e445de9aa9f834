"""Feedback server under sustained load: labels per second and submission latency (p50/p99).

Starts `tether label serve` on a fresh SQLite database in a separate process, then runs N client threads on
loopback that fetch a task and submit a label in a loop. Writes `bench/results/feedback_load.json` and prints
a Markdown table for docs/feedback.md.

    python bench/feedback_load.py --clients 1 8 50 --seconds 10
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from tether.feedback.loadtest import run_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "feedback_load.json"))
    args = parser.parse_args()
    results = [asdict(run_load(clients=n, seconds=args.seconds)) for n in args.clients]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("| clients | labels/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['clients']} | {r['labels_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
