"""The playground in headless Chromium (Debian's /usr/bin/chromium), on a desktop and a phone screen, with
`tether label worker` running as a separate process: a prompt, the answers of tiny random-init models side by
side, the KL slider, a thumb that lands in the thumbs campaign. No page scrolls sideways."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_kit import BROWSER_MARKS, VIEWPORTS, browser, sign_in, sync_api  # noqa: F401 (fixture)
from conftest import ADMIN_TOKEN, free_port
from test_playground import fake_personal_run, fake_ppo_run

from tether.feedback.app import create_app
from tether.feedback.playground import load_playground

XSS = "<script>window.__pwned = 1</script>"

pytestmark = BROWSER_MARKS


@pytest.fixture
def playground_server(store, db_url, tmp_path, tiny_models) -> Iterator[str]:
    """The app with a playground over a fake PPO run of tiny models, served on loopback, and a worker process."""
    run = fake_ppo_run(tmp_path, tiny_models["llama"], {1: 0.01, 2: 0.2, 3: 0.4, 4: 0.7}, checkpoints=[2, 4])
    config = tmp_path / "playground.yaml"
    config.write_text(f"runs: [{run.name}]\nreward_model: {tiny_models['rm']}\ngeneration: {{max_new_tokens: 12}}\n")
    yield from _serve_with_worker(store, db_url, config)


@pytest.fixture
def my_model_server(store, db_url, tmp_path) -> Iterator[str]:
    """The app with a playground over a fake `tether personalize` run (ann has an adapter), and a worker process."""
    run = fake_personal_run(tmp_path)
    config = tmp_path / "playground.yaml"
    config.write_text(f"personal: {run.name}\ncampaign: my-thumbs\ngeneration: {{max_new_tokens: 12}}\n")
    yield from _serve_with_worker(store, db_url, config)


def _serve_with_worker(store, db_url: str, config: Path) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, playground=load_playground(config)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tether.feedback.cli", "worker", "--db", db_url, "--poll-s", "0.2", "--name", "browser-worker"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        server.should_exit = True
        thread.join(timeout=10)


def _no_sideways_scroll(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    inner = page.evaluate("window.innerWidth")
    assert width <= inner, f"the page is {width}px wide on a {inner}px screen"


@pytest.mark.parametrize("screen", sorted(VIEWPORTS))
def test_playground_in_chromium(playground_server, browser, store, screen: str, tmp_path: Path):
    url = playground_server
    page = sign_in(browser, url, ADMIN_TOKEN, VIEWPORTS[screen], timeout_ms=20_000)
    page.goto(url + "/playground")
    _no_sideways_scroll(page)
    assert page.locator(".answer").count() == 3  # reference, the slider over the checkpoints, the final policy

    page.fill("#prompt", f"Say hello {XSS}")
    page.click("#generate")
    sync_api.expect(page.locator("#pg-status")).to_have_text(re.compile("^(done|failed)"), timeout=180_000)  # polls; no eval (CSP)
    assert page.inner_text("#pg-status") == "done"
    assert page.locator("#pg-progress").is_hidden()
    assert page.evaluate("window.__pwned") is None
    for slot in ("first", "slider", "last"):
        card = page.locator(f".answer[data-slot={slot}]")
        assert card.locator(".reward").inner_text().startswith("reward ")
        assert card.locator(".text").inner_text() != "waiting for the worker…"
    assert page.locator(".answer[data-slot=first] .name").inner_text() == "ppo: reference"
    assert page.locator(".answer[data-slot=last] .name").inner_text() == "ppo: final"
    _no_sideways_scroll(page)
    page.screenshot(path=str(tmp_path / f"playground-{screen}.png"), full_page=True)

    # the slider moves along the KL axis: the far end is the highest-KL model
    page.focus("#kl-slider")
    page.keyboard.press("Home")
    assert page.locator(".answer[data-slot=slider] .name").inner_text() == "ppo: reference"
    page.keyboard.press("End")
    slider_name = page.locator(".answer[data-slot=slider] .name").inner_text()
    assert slider_name in ("ppo: step 4", "ppo: final")  # both at KL 0.7
    assert "KL 0.7" in page.inner_text("#slider-label")

    page.click(".answer[data-slot=last] .thumb[data-thumb='1']")
    sync_api.expect(page.locator(".answer[data-slot=last] .thumb-status")).to_have_text(re.compile("^saved to playground"))
    assert page.get_attribute(".answer[data-slot=last] .thumb[data-thumb='1']", "aria-pressed") == "true"
    campaign = store.campaign_by_name("playground")
    [item] = store.list_items(campaign.id)
    assert item.model == "ppo: final" and item.prompt == f"Say hello {XSS}"
    assert item.completions == [page.locator(".answer[data-slot=last] .text").inner_text()]
    [label] = store.list_labels(campaign.id)
    assert label.data.thumb == 1

    page.goto(url + "/admin")
    assert "done" in page.inner_text("#jobs-table")
    assert "playground: Say hello" in page.inner_text("#jobs-table")
    page.screenshot(path=str(tmp_path / f"admin-jobs-{screen}.png"), full_page=True)
    page.context.close()


def test_my_model_in_chromium(my_model_server, browser, store, tmp_path: Path):
    url = my_model_server
    ann = store.add_labeler("ann").token
    page = sign_in(browser, url, ann, VIEWPORTS["phone"], timeout_ms=20_000)
    page.goto(url + "/queue")
    page.click("a[href='/my-model']")
    assert page.locator(".answer").count() == 2
    assert page.locator(".answer[data-slot=first] .role").inner_text().lower() == "shared model"  # CSS capitals
    assert page.locator(".answer[data-slot=last] .name").inner_text() == "yours (ann)"
    page.fill("#prompt", f"Tell me a story {XSS}")
    page.keyboard.press("Control+Enter")
    sync_api.expect(page.locator("#pg-status")).to_have_text(re.compile("^(done|failed)"), timeout=180_000)
    assert page.inner_text("#pg-status") == "done" and page.evaluate("window.__pwned") is None
    mine = page.locator(".answer[data-slot=last] .text").inner_text()
    _no_sideways_scroll(page)
    page.screenshot(path=str(tmp_path / "my-model-phone.png"), full_page=True)
    page.click(".answer[data-slot=last] .thumb[data-thumb='1']")
    sync_api.expect(page.locator(".answer[data-slot=last] .thumb-status")).to_have_text(re.compile("^saved to my-thumbs"))
    campaign = store.campaign_by_name("my-thumbs")
    [item] = store.list_items(campaign.id)
    [label] = store.list_labels(campaign.id)
    assert item.model == "yours (ann)" and item.completions == [mine] and label.labeler_name == "ann" and label.data.thumb == 1
    page.context.close()
