"""`tether label ...`: serve the feedback app, import campaigns, export labels, manage labelers."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.errors import ConfigError, DataError, TetherError
from tether.storage import Conflict, FeedbackStore, NotFound, StoreError, TaskKind

DEFAULT_DB = "sqlite:///feedback.db"
ADMIN_TOKEN_ENV = "TETHER_ADMIN_TOKEN"
ASSIGNMENT_TIMEOUT_ENV = "TETHER_ASSIGNMENT_TIMEOUT"
TOKEN_FILE_SUFFIX = ".admin-token"


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
    serve.add_argument("--admin-token", default=None, help=f"admin token to use (env {ADMIN_TOKEN_ENV}); otherwise one is made on first start")
    token_file_help = "file (mode 0600) that receives a newly made admin token (default: next to a SQLite database, DB.admin-token; else ./tether-admin-token)"
    serve.add_argument("--admin-token-file", default=None, help=token_file_help)
    serve.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    serve.add_argument(
        "--assignment-timeout",
        type=float,
        default=os.environ.get(ASSIGNMENT_TIMEOUT_ENV, "30"),  # argparse converts a string default with `type`
        metavar="MIN",
        help=f"minutes an item stays with a labeler who does not answer, before it goes back to the pool (default 30; 0 never; env {ASSIGNMENT_TIMEOUT_ENV})",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        help="comma-separated addresses of proxies whose X-Forwarded-Proto/-For are trusted, or '*' (default 127.0.0.1; env FORWARDED_ALLOW_IPS)",
    )
    serve.add_argument("--secure-cookies", action="store_true", help="always mark the sign-in cookie Secure (the site is served over HTTPS by a proxy)")
    serve.add_argument("--playground", default=None, metavar="FILE", help="YAML file of the playground's models (page /playground; see docs/feedback.md)")
    serve.add_argument("--with-worker", action="store_true", help="also start a `tether label worker` process on the same database (model jobs)")

    worker = command("worker", "run model jobs (sampling, playground answers) queued by the web app")
    worker.add_argument("--name", default=None, help="name in the jobs list (default host:pid)")
    worker.add_argument("--poll-s", type=float, default=1.0, help="seconds between looks for work when idle (default 1)")
    worker.add_argument("--heartbeat-s", type=float, default=10.0, help="seconds between heartbeats of a running job (default 10)")
    worker.add_argument("--stale-s", type=float, default=120.0, help="a running job without heartbeat this long is queued again (default 120)")
    worker.add_argument("--once", action="store_true", help="stop when no job is queued instead of waiting for work")

    pg = sub.add_parser("playground", help="check a playground file: print the models it resolves to (with their KL) and its scorers")
    pg.add_argument("file", help="playground YAML file (see docs/feedback.md)")

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
    exp.add_argument("--out", default=None, help="output JSONL file")
    exp.add_argument("--labeler", default=None, help="only this person's own labels (their pairs, rankings or thumbs)")
    exp.add_argument("--by-labeler", default=None, metavar="DIR", help="instead of --out: one file per labeler in DIR, listed in DIR/labelers.json")
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
    adm = command("admin-token", "set a new admin token and print it (or write it to a file)")
    adm.add_argument("--admin-token-file", default=None, help="write the token to this file (mode 0600) and print only where it is")
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


def default_token_file(db_url: str) -> Path:
    """Where a newly made admin token is written: beside a SQLite database file, else the current folder."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(db_url)
    except Exception:  # the store reports a bad URL with its own message
        return Path("tether-admin-token")
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        return Path(database + TOKEN_FILE_SUFFIX)
    return Path("tether-admin-token")


def write_secret(path: Path, secret: str) -> None:
    """Writes a secret to a file only its owner can read (0600), replacing the file atomically.

    Raises:
        ConfigError: the file cannot be written.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secret + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"--admin-token-file {path}: cannot write ({exc.strerror or exc})") from None


def _new_admin_token(store: FeedbackStore, token_file: Path) -> None:
    """Makes an admin token, writes it to `token_file` first (a token nobody can read is never set), then sets it."""
    from tether.storage.store import new_token

    token = new_token()
    write_secret(token_file, token)
    store.set_admin_token(token)
    print(f"admin token written to {token_file} (readable by you only)", flush=True)


def server_config(app: Any, args: argparse.Namespace) -> Any:
    """The uvicorn configuration of `serve`: X-Forwarded-Proto/-For honoured from --forwarded-allow-ips only."""
    import uvicorn

    return uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips
    )


def _serve(args: argparse.Namespace) -> int:
    import subprocess

    import uvicorn

    from tether.feedback.app import create_app
    from tether.feedback.playground import load_playground

    if args.assignment_timeout < 0:
        raise ConfigError("--assignment-timeout: must be 0 (never) or more minutes")
    playground = load_playground(args.playground) if args.playground else None
    store = FeedbackStore(args.db, assignment_timeout_s=args.assignment_timeout * 60)
    token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        store.set_admin_token(token)
    elif not store.has_admin_token():
        _new_admin_token(store, Path(args.admin_token_file) if args.admin_token_file else default_token_file(args.db))
    else:
        print("admin token: set earlier (`tether label admin-token --admin-token-file FILE` makes a new one)", flush=True)
    print(f"tether feedback: http://{args.host}:{args.port}/  database {args.db}", flush=True)
    if playground is not None:
        print(f"playground: http://{args.host}:{args.port}/playground  {len(playground.models)} models", flush=True)
    worker = subprocess.Popen([sys.executable, "-m", "tether.feedback.cli", "worker", "--db", args.db]) if args.with_worker else None
    try:
        app = create_app(store, max_body_bytes=int(args.max_body_mb * 1024 * 1024), secure_cookies=args.secure_cookies, playground=playground)
        uvicorn.Server(server_config(app, args)).run()
    finally:
        if worker is not None:  # a job in progress is queued again by the next worker (no heartbeat)
            worker.kill()
            worker.wait()
    return 0


def _worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tether.feedback.worker import default_name, run_worker

    if min(args.poll_s, args.heartbeat_s, args.stale_s) <= 0:
        raise ConfigError("--poll-s, --heartbeat-s and --stale-s: must be positive")
    if args.stale_s <= args.heartbeat_s:
        raise ConfigError("--stale-s: must be longer than --heartbeat-s, or live jobs would be queued again")
    stop = threading.Event()

    def on_signal(*_: object) -> None:  # the first signal lets the current job finish; a second one stops now
        if stop.is_set():
            raise SystemExit(1)
        stop.set()
        print("tether worker: stopping after the current job (signal again to stop now)", flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    name = args.name or default_name()
    print(f"tether worker {name}: database {args.db}", flush=True)
    try:
        ran = run_worker(FeedbackStore(args.db), name, args.poll_s, args.heartbeat_s, args.stale_s, once=args.once, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"tether worker {name}: stopped after {ran} job(s)", flush=True)
    return 0


def _playground(args: argparse.Namespace) -> int:
    from tether.feedback.playground import load_playground

    cfg = load_playground(args.file)
    for number, m in enumerate(cfg.models):
        role = "SFT" if number == 0 else "aligned" if number == len(cfg.models) - 1 else ""
        print(f"{m.name}\tKL {'n/a' if m.kl is None else f'{m.kl:.4g}'}\t{m.path}\t{role}".rstrip())
    print(f"reward model: {cfg.reward_model or 'none'}  judge: {cfg.judge or 'none'}  thumbs campaign: {cfg.campaign}")
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
    from tether.feedback.export import ExportKind, ExportMode, export_by_labeler, export_records, labels_of, resolve_kind, write_jsonl

    from tether.feedback.quality import screen_labels

    if args.min_gold_accuracy is not None and not 0 <= args.min_gold_accuracy <= 1:
        raise ConfigError("--min-gold-accuracy: must be between 0 and 1")
    if (args.out is None) == (args.by_labeler is None):
        raise ConfigError("give one of --out FILE and --by-labeler DIR")
    if args.by_labeler is not None and args.labeler is not None:
        raise ConfigError("--labeler and --by-labeler: give one (--by-labeler writes every labeler's file)")
    store = FeedbackStore(args.db)
    campaign = store.campaign_by_name(args.campaign)
    kind = resolve_kind(campaign.kind, ExportKind(args.kind))
    items = store.list_items(campaign.id)
    screened = screen_labels(campaign, items, store.list_labels(campaign.id), args.min_gold_accuracy, args.exclude_fast)
    if args.by_labeler is not None:
        counts = export_by_labeler(campaign, items, screened.labels, kind, args.by_labeler)
        for name, count in counts.items():
            print(f"{name}: {count} {kind.value}")
        print(f"wrote {len(counts)} labelers' files to {args.by_labeler} (index: labelers.json)")
    elif args.labeler is not None:
        count = write_jsonl(export_records(campaign, items, labels_of(screened.labels, args.labeler), kind, ExportMode.ALL), args.out)
        print(f"wrote {count} {kind.value} of {args.labeler} to {args.out}")
    else:
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

    store = FeedbackStore(args.db)
    if args.admin_token_file:
        _new_admin_token(store, Path(args.admin_token_file))
        return 0
    token = new_token()
    store.set_admin_token(token)
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
    "worker": _worker,
    "playground": _playground,
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
