"""`tether label ...`: serve the feedback app, import campaigns, export labels, manage labelers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tether.errors import ConfigError, DataError, TetherError
from tether.storage import Conflict, FeedbackStore, NotFound, StoreError, TaskKind

DEFAULT_DB = "sqlite:///feedback.db"
ADMIN_TOKEN_ENV = "TETHER_ADMIN_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether label", description="Collect human feedback on model outputs and export it for training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", default=os.environ.get("TETHER_DB", DEFAULT_DB), help=f"database URL (default {DEFAULT_DB}; env TETHER_DB)")
        return p

    serve = command("serve", "run the web app")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--admin-token", default=None, help=f"admin token to use (env {ADMIN_TOKEN_ENV}); one is made and printed on first start")
    serve.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")

    imp = command("import", "create a campaign from a campaign file (JSONL), or add items to one")
    imp.add_argument("file", help='campaign file: one {"prompt", "completions": [...]} per line')
    imp.add_argument("--name", required=True, help="campaign name")
    imp.add_argument("--kind", choices=[k.value for k in TaskKind], default=TaskKind.RANK.value, help="task kind (default rank)")
    imp.add_argument("--labelers-per-item", type=int, default=1, help="labelers who see each item (default 1; more gives agreement)")
    imp.add_argument("--guidelines", default=None, help="text or Markdown file with the guidelines shown to labelers")
    imp.add_argument("--model", default=None, help="red-team campaigns: model that answers labelers' prompts")
    imp.add_argument("--append", action="store_true", help="add the items to the existing campaign NAME")
    imp.add_argument("--gold", default=None, metavar="FILE", help="gold items with their known answer (JSONL), mixed into every labeler's queue")
    imp.add_argument("--gold-rate", type=float, default=None, help="chance that a labeler's next task is a gold item (default 0.1)")
    imp.add_argument("--fast-ms", type=int, default=None, help="answers faster than this many ms are flagged (default: from text length)")
    imp.add_argument("--members", default=None, help="comma-separated labelers allowed on the campaign (default: every labeler)")

    exp = command("export", "write a campaign's labels as JSONL for `tether rm` / `tether dpo`")
    exp.add_argument("--campaign", required=True, help="campaign name")
    exp.add_argument("--out", required=True, help="output JSONL file")
    exp.add_argument("--mode", choices=["consensus", "all"], default="consensus", help="merge labelers per item (default) or every labeler's answer")
    exp.add_argument("--kind", choices=["auto", "pairs", "rankings", "thumbs", "prompts"], default="auto", help="format (default: by task kind)")
    exp.add_argument("--min-gold-accuracy", type=float, default=None, help="leave out labelers whose accuracy on gold items is below this (0-1)")
    exp.add_argument("--exclude-fast", action="store_true", help="leave out answers given implausibly fast")

    mem = command("members", "show, add or remove the labelers allowed on a campaign (none: every labeler)")
    mem.add_argument("campaign", help="campaign name")
    mem.add_argument("--add", default=None, help="comma-separated labeler names to add")
    mem.add_argument("--remove", default=None, help="comma-separated labeler names to remove")

    add = command("add-labeler", "add a labeler and print the sign-in token")
    add.add_argument("name", help="labeler name")
    tok = command("new-token", "give a labeler a new sign-in token (the old one stops working)")
    tok.add_argument("name", help="labeler name")
    command("admin-token", "set a new admin token and print it")
    command("campaigns", "list campaigns with their progress")
    agr = command("agreement", "print a campaign's agreement report")
    agr.add_argument("--campaign", required=True, help="campaign name")
    qua = command("quality", "print each labeler's accuracy on gold items and fast answers")
    qua.add_argument("--campaign", required=True, help="campaign name")
    bench = sub.add_parser("bench", help="load test: labels per second and submission latency on a fresh SQLite database")
    bench.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    bench.add_argument("--seconds", type=float, default=10.0, help="duration (default 10)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _read_guidelines(path: str | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"--guidelines {path}: cannot read ({exc.strerror})") from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tether.feedback.app import create_app
    from tether.storage.store import new_token

    store = FeedbackStore(args.db)
    token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        store.set_admin_token(token)
    elif not store.has_admin_token():
        token = new_token()
        store.set_admin_token(token)
        print(f"admin token (shown once, keep it): {token}", flush=True)
    print(f"tether feedback: http://{args.host}:{args.port}/  database {args.db}", flush=True)
    uvicorn.run(create_app(store, max_body_bytes=int(args.max_body_mb * 1024 * 1024)), host=args.host, port=args.port, log_level="info")
    return 0


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _import(args: argparse.Namespace) -> int:
    from tether.feedback.campaign_file import read_campaign_file
    from tether.feedback.tasks import expand_items

    if args.labelers_per_item < 1:
        raise ConfigError("--labelers-per-item: must be at least 1")
    if args.gold_rate is not None and not 0 <= args.gold_rate <= 1:
        raise ConfigError("--gold-rate: must be between 0 and 1")
    if args.fast_ms is not None and args.fast_ms < 1:
        raise ConfigError("--fast-ms: must be at least 1")
    store = FeedbackStore(args.db)
    kind = store.campaign_by_name(args.name).kind if args.append else TaskKind(args.kind)
    items = read_campaign_file(args.file, kind)
    if args.gold:
        items += read_campaign_file(args.gold, kind, gold=True)
    items = expand_items(kind, items)
    n_gold = sum(1 for item in items if item.gold is not None)
    members = _names(args.members)
    if args.append:
        campaign = store.campaign_by_name(args.name)
        total = store.add_items(campaign.id, items)
        if members:
            store.add_members(campaign.id, members)
        if args.gold_rate is not None or args.fast_ms is not None:
            store.update_campaign(campaign.id, gold_rate=args.gold_rate, fast_ms=args.fast_ms)
        print(f"added {len(items)} items ({n_gold} gold) to campaign {campaign.name!r} ({total} in all)")
        return 0
    settings = {"gold_rate": args.gold_rate} if args.gold_rate is not None else {}
    campaign = store.create_campaign(
        args.name, kind, items, _read_guidelines(args.guidelines), args.labelers_per_item, args.model, fast_ms=args.fast_ms, members=members, **settings
    )
    who = f"members {', '.join(members)}" if members else "open to every labeler"
    print(
        f"created campaign {campaign.name!r}: {campaign.n_items} items ({n_gold} gold), task {kind.value}, "
        f"{campaign.labelers_per_item} labeler(s) per item, {who}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from tether.feedback.export import ExportKind, ExportMode, export_records, resolve_kind, write_jsonl

    from tether.feedback.quality import screen_labels

    if args.min_gold_accuracy is not None and not 0 <= args.min_gold_accuracy <= 1:
        raise ConfigError("--min-gold-accuracy: must be between 0 and 1")
    store = FeedbackStore(args.db)
    campaign = store.campaign_by_name(args.campaign)
    kind = resolve_kind(campaign.kind, ExportKind(args.kind))
    items = store.list_items(campaign.id)
    screened = screen_labels(campaign, items, store.list_labels(campaign.id), args.min_gold_accuracy, args.exclude_fast)
    records = export_records(campaign, items, screened.labels, kind, ExportMode(args.mode))
    count = write_jsonl(records, args.out)
    print(f"wrote {count} {kind.value} ({args.mode}) to {args.out}")
    if args.min_gold_accuracy is not None:
        print(f"left out (gold accuracy below {args.min_gold_accuracy}): {', '.join(screened.dropped_labelers) or 'nobody'}")
    if args.exclude_fast:
        print(f"left out {screened.n_fast_dropped} implausibly fast answer(s)")
    return 0


def _members(args: argparse.Namespace) -> int:
    store = FeedbackStore(args.db)
    campaign = store.campaign_by_name(args.campaign)
    members = store.list_members(campaign.id)
    if args.add:
        members = store.add_members(campaign.id, _names(args.add))
    if args.remove:
        members = store.remove_members(campaign.id, _names(args.remove))
    names = ", ".join(lab.name for lab in members)
    print(f"{campaign.name}: {'members ' + names if members else 'no members: open to every labeler'}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from tether.feedback.quality import quality_report

    store = FeedbackStore(args.db)
    campaign = store.campaign_by_name(args.campaign)
    report = quality_report(campaign, store.list_items(campaign.id), store.list_labels(campaign.id))
    print(f"gold items: {report.n_gold_items}  gold rate: {report.gold_rate}  fast below: {report.fast_ms or 'from text length'} ms")
    for row in report.labelers:
        gold = f"{row.n_correct}/{row.n_gold} = {row.accuracy:.2f} [{row.low:.2f}, {row.high:.2f}]" if row.accuracy is not None else "n/a"
        flags = ("  FAILS GOLD" if row.fails_gold else "") + ("  FAST" if row.fast else "")
        print(f"  {row.name}\tgold {gold}\tfast {row.n_fast}/{row.n_timed}{flags}")
    return 0


def _add_labeler(args: argparse.Namespace) -> int:
    created = FeedbackStore(args.db).add_labeler(args.name)
    print(f"labeler {created.labeler.name!r} token: {created.token}")
    return 0


def _new_token(args: argparse.Namespace) -> int:
    store = FeedbackStore(args.db)
    labeler = store.labeler_by_name(args.name)
    if labeler is None:
        raise NotFound(f"labeler {args.name!r} not found")
    print(f"labeler {labeler.name!r} token: {store.rotate_token(labeler.id)}")
    return 0


def _admin_token(args: argparse.Namespace) -> int:
    from tether.storage.store import new_token

    token = new_token()
    FeedbackStore(args.db).set_admin_token(token)
    print(f"admin token: {token}")
    return 0


def _campaigns(args: argparse.Namespace) -> int:
    store = FeedbackStore(args.db)
    for c in store.list_campaigns():
        p = store.progress(c.id)
        print(f"{c.name}\t{c.kind.value}\t{c.status}\titems {p.n_items}\tlabels {p.n_labels}/{p.n_target}\tcomplete {p.n_items_complete}")
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from tether.feedback.quality import agreement_report, ordinary_labels

    store = FeedbackStore(args.db)
    campaign = store.campaign_by_name(args.campaign)
    report = agreement_report(campaign.kind, ordinary_labels(store.list_items(campaign.id), store.list_labels(campaign.id)))

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(f"items with several labelers: {report.n_items_multi}  comparisons: {report.n_pairs}")
    print(f"pairwise agreement: {fmt(report.pairwise)}  krippendorff alpha ({report.alpha_level}): {fmt(report.alpha)}")
    for row in report.labelers:
        flag = "  OUTLIER" if row.outlier else ""
        print(f"  {row.name}\tlabels {row.n_labels}\tpairwise {fmt(row.pairwise)}\tconsensus {fmt(row.consensus)}\talpha without {fmt(row.alpha_without)}{flag}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from tether.feedback.loadtest import run_load

    if args.clients < 1 or args.seconds <= 0:
        raise ConfigError("--clients and --seconds: must be positive")
    result = run_load(clients=args.clients, seconds=args.seconds)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"{result.clients} clients, {result.seconds} s: {result.labels} labels, {result.labels_per_s} labels/s, "
            f"submission p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, errors {result.errors}"
        )
    return 0


COMMANDS = {
    "serve": _serve,
    "import": _import,
    "export": _export,
    "add-labeler": _add_labeler,
    "new-token": _new_token,
    "admin-token": _admin_token,
    "campaigns": _campaigns,
    "agreement": _agreement,
    "members": _members,
    "quality": _quality,
    "bench": _bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `tether label COMMAND ...`.

    Args:
        argv: arguments after `label` (default: sys.argv[1:]).

    Returns:
        Exit code: 0 on success, 1 on a user error (one line on stderr), 2 on bad arguments.
    """
    args = _parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    try:
        return COMMANDS[args.command](args)
    except (TetherError, Conflict, NotFound, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"error: the feedback app needs its extras: pip install 'tether[feedback]' ({exc})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
