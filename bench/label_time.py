"""Labeling effort per item in the browser: a scripted labeler ranks K=4 long completions.

Runs against any checkout of tether (`--repo`, default: this one): it imports that checkout's
feedback app, fills a fresh SQLite database with rank items of K=4 long completions (one of about
50 KB, the others 2-8 KB of Markdown), serves it on loopback, and drives Debian's Chromium with
Playwright on a desktop (1280x800) and a phone (390x844) viewport. For every item the scripted labeler
does what a person must do:

1. scroll (mouse wheel: 100 px a notch on the desktop, 400 px a swipe on the phone, the pointer
   where a person's would be: over a completion's scroll box when it has one, else over the page)
   until every completion has been on screen (`--read glance`: some of it; `--read all`: every
   line of it, so a scroll box is scrolled to its end too);
2. rank the completions 1..K, clicking the rank buttons nearest to hand (the answer bar when the page
   has one, else each completion's own buttons, scrolling to each first);
3. reach Submit (scrolling to it when it is off screen) and click it; the next item's page has loaded.

Per item it records the wall time, the scroll distance in px (every scrolled element: page and
boxes, measured in the page) and the actions (wheel notches or swipes, clicks). Times are the
machine's, not a person's: they count rendering and scrolling, not reading or deciding.

    python bench/label_time.py --repo /path/to/checkout --items 5 --out bench/results/label_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-smooth-scrolling", "--disable-background-networking", "--no-first-run"]
DEVICES = {"desktop": ({"width": 1280, "height": 800}, 100), "phone": ({"width": 390, "height": 844}, 400)}
# layouts: "default" as the page opens; "stacked" switches side-by-side columns off first where the page has them
LAYOUTS = ("default", "stacked")
SIZES = (50_000, 8_000, 4_000, 2_000)
MAX_RUNS = 8  # device x reading mode x layout: each run is its own labeler, so each sees every item

# sums |delta| of every scroll (the page and any scroll box) since the page loaded
SCROLL_METER = """
(() => {
  window.__scrolled = 0;
  const last = new WeakMap();
  const pos = (t) => t === document ? window.scrollY : t.scrollTop;
  document.addEventListener("scroll", (e) => {
    const t = e.target;
    const now = pos(t);
    window.__scrolled += Math.abs(now - (last.has(t) ? last.get(t) : 0));
    last.set(t, now);
  }, true);
})();
"""

# per completion: how far down its text has been on screen (content px), and its text height
COVERAGE = """
(state) => {
  const cards = Array.from(document.querySelectorAll("li.completion"));
  return cards.map((card, i) => {
    const body = card.querySelector(".body") || card.querySelector(".text");
    const r = body.getBoundingClientRect();
    const top = Math.max(r.top, 0), bottom = Math.min(r.bottom, window.innerHeight - (state.covered || 0));
    const boxed = body.scrollHeight > body.clientHeight + 2;
    const seen = bottom > top ? body.scrollTop + (bottom - r.top) : -1;
    const firstSeen = bottom > top ? body.scrollTop + (top - r.top) : Infinity;
    return { seen: seen, firstSeen: firstSeen, height: body.scrollHeight, boxed: boxed,
             top: r.top, bottom: r.bottom, atEnd: body.scrollTop + body.clientHeight >= body.scrollHeight - 2,
             x: r.left + r.width / 2 };
  });
}
"""


def long_text(n_bytes: int, seed: int) -> str:
    """Markdown of about n_bytes, mostly long paragraphs: a heading and four paragraphs per section,
    a list and a code block in every fifth section."""
    words = "the egg water pot boil minutes shell cold heat salt timer yolk white soft hard peel".split()
    out: list[str] = []
    i = 0
    while sum(len(p) for p in out) < n_bytes:
        paragraphs = []
        for k in range(4):
            sentence = " ".join(words[(seed + i * 7 + k * 5 + j * 3) % len(words)] for j in range(16))
            paragraphs.append(" ".join(f"{sentence.capitalize()}." for _ in range(6)))
        extra = f"- {words[i % 16]}\n- {words[(i + 3) % 16]}\n\n```\nstep({i})\n```\n\n" if i % 5 == 4 else ""
        out.append(f"## Section {i}\n\n" + "\n\n".join(paragraphs) + "\n\n" + extra)
        i += 1
    return "".join(out)[:n_bytes]


def serve(repo: Path, db: str, n_items: int) -> tuple[str, str, object]:
    """Builds the checkout's app on a fresh database and serves it in a thread; returns (url, token, server)."""
    sys.path.insert(0, str(repo / "src"))
    import uvicorn

    from tether.feedback.app import create_app
    from tether.storage import FeedbackStore, NewItem, TaskKind

    import tether.feedback.app

    loaded = Path(tether.feedback.app.__file__).resolve()
    if not loaded.is_relative_to(repo):
        raise SystemExit(f"imported {loaded}, not the checkout {repo}: run with a Python whose tether is not installed elsewhere, or put {repo / 'src'} first")
    store = FeedbackStore(db)
    items = [NewItem(prompt=f"How long do I boil an egg? (item {i})", completions=[long_text(n, i * 10 + j) for j, n in enumerate(SIZES)]) for i in range(n_items)]
    store.create_campaign("bench", TaskKind.RANK, items, guidelines="Rank by correctness, then helpfulness.", labelers_per_item=MAX_RUNS)
    tokens = [store.add_labeler(f"labeler{i}").token for i in range(MAX_RUNS)]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", tokens, server


class Labeler:
    """Drives one page like a person: wheel or swipe to scroll, click to rank and submit; counts both."""

    def __init__(self, page, step: int):
        self.page, self.step = page, step
        self.actions = 0

    def settle(self) -> None:
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def covered(self) -> int:
        """Pixels at the bottom of the screen hidden under a sticky bar (0 without one)."""
        return self.page.evaluate("() => { const b = document.getElementById('task-bar'); if (!b) return 0; const r = b.getBoundingClientRect(); return r.top < innerHeight && getComputedStyle(b).position === 'sticky' ? innerHeight - r.top : 0; }")

    def wheel(self, x: float, y: float, dy: int) -> None:
        self.page.mouse.move(x, y)
        self.page.mouse.wheel(0, dy)
        self.actions += 1
        self.settle()

    def page_wheel(self, dy: int) -> None:
        """Scrolls the page itself (the pointer in the page's left margin, over no scroll box)."""
        self.wheel(3, self.page.viewport_size["height"] / 2, dy)

    def see_all(self, read: str) -> None:
        """Scrolls until every completion has been on screen (some of it, or every line of it)."""
        height = self.page.viewport_size["height"]
        seen: list[dict[str, float]] = []
        for _ in range(5000):
            bottom = height - self.covered()
            cover = self.page.evaluate(COVERAGE, {"covered": height - bottom})
            seen = seen or [{"from": float("inf"), "to": -1.0} for _ in cover]
            for s, c in zip(seen, cover):
                if c["seen"] >= 0:
                    s["from"], s["to"] = min(s["from"], c["firstSeen"]), max(s["to"], c["seen"])
            whole = [s["from"] <= 2 and s["to"] >= c["height"] - 2 for s, c in zip(seen, cover)]
            todo = [i for i, (s, c) in enumerate(zip(seen, cover)) if s["to"] < 0 or (read == "all" and not whole[i])]
            if not todo:
                return
            c, s = cover[todo[0]], seen[todo[0]]
            if c["seen"] < 0:  # not on screen: scroll the page towards it
                self.page_wheel(self.step if c["top"] > 0 else -self.step)
            elif s["from"] > 2:  # its start was missed: back up
                self.page_wheel(-self.step)
            elif c["boxed"] and not c["atEnd"]:  # read on inside its scroll box, pointer over the box
                y = (max(c["top"], 0) + min(c["bottom"], bottom)) / 2
                self.wheel(c["x"], y, self.step)
            else:  # its end is below the screen (or under the bar)
                self.page_wheel(self.step)
        raise RuntimeError("could not see every completion")

    def reach(self, selector: str) -> None:
        """Scrolls the page until the element is wholly on screen (and not under a sticky bar)."""
        for _ in range(2000):
            box = self.page.locator(selector).bounding_box()
            bottom = self.page.viewport_size["height"] - (0 if self.page.locator(selector).evaluate("e => !!e.closest('#task-bar')") else self.covered())
            if box["y"] >= 0 and box["y"] + box["height"] <= bottom:
                return
            self.page_wheel(self.step if box["y"] > 0 else -self.step)
        raise RuntimeError(f"could not reach {selector}")

    def click(self, selector: str) -> None:
        self.reach(selector)
        self.page.click(selector)
        self.actions += 1


def measure(browser, url: str, token: str, device: str, read: str, n_items: int, layout: str = "default") -> list[dict]:
    """Runs the items and reads each item's scroll distance just before Submit navigates away."""
    viewport, step = DEVICES[device]
    context = browser.new_context(viewport=viewport)
    context.add_init_script(SCROLL_METER)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url + "/login")
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.goto(url + page.locator("a.button.primary").first.get_attribute("href"))
    if layout == "stacked" and page.locator("#toggle-columns[aria-pressed=true]").is_visible():
        page.click("#toggle-columns")  # remembered for the next items
        page.reload()
    rows = []
    for _ in range(n_items):
        if page.locator("li.completion").count() == 0:
            break
        labeler = Labeler(page, step)
        height = page.evaluate("document.documentElement.scrollHeight")
        started = time.perf_counter()
        labeler.see_all(read)
        k = page.locator("li.completion").count()
        bar = page.locator(".bar-rank-btn").count() > 0
        for position in range(1, k + 1):
            sel = f".bar-rank[data-position='{position}'] .bar-rank-btn[data-rank='{position}']" if bar else f"li.completion[data-position='{position}'] .rank-btn[data-rank='{position}']"
            labeler.click(sel)
        labeler.reach("#submit")
        scrolled = page.evaluate("window.__scrolled")
        with page.expect_navigation():
            page.click("#submit")
        labeler.actions += 1
        page.wait_for_load_state("load")
        rows.append({"seconds": time.perf_counter() - started, "scroll_px": scrolled, "actions": labeler.actions, "page_height_px": height})
    context.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the tether checkout to measure")
    parser.add_argument("--items", type=int, default=5, help="items per device and reading mode")
    parser.add_argument("--read", nargs="+", default=["glance", "all"], choices=["glance", "all"])
    parser.add_argument("--layout", nargs="+", default=["default"], choices=LAYOUTS, help="stacked: side by side off (where the page has it)")
    parser.add_argument("--devices", nargs="+", default=list(DEVICES), choices=list(DEVICES))
    parser.add_argument("--out", type=Path, default=None, help="JSON with every item's numbers")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    repo = args.repo.resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        url, tokens, server = serve(repo, f"sqlite:///{tmp}/bench.db", args.items)
        results = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            runs = [(d, r, lay) for d in args.devices for r in args.read for lay in args.layout]
            if len(runs) > MAX_RUNS:
                raise SystemExit(f"at most {MAX_RUNS} runs (devices x read x layout)")
            for (device, read, layout), token in zip(runs, tokens):
                rows = measure(browser, url, token, device, read, args.items, layout)
                results.append({"device": device, "read": read, "layout": layout, "items": rows})
            browser.close()
        server.should_exit = True
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), platform.processor())
    print(f"checkout {repo} ({commit}); CPU {cpu}; {args.items} items of K={len(SIZES)} ({' + '.join(f'{n // 1000} KB' for n in SIZES)})")
    print("| device | layout | read | page height px | s / item | scroll px / item | actions / item |\n|---|---|---|---|---|---|---|")
    for r in results:
        items = r["items"]
        med = {key: statistics.median(row[key] for row in items) for key in ("page_height_px", "seconds", "scroll_px", "actions")}
        print(f"| {r['device']} | {r['layout']} | {r['read']} | {med['page_height_px']:,.0f} | {med['seconds']:.2f} | {med['scroll_px']:,.0f} | {med['actions']:.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"repo": str(repo), "commit": commit, "cpu": cpu, "results": results}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
