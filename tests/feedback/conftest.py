"""Fixtures: a store on a temporary SQLite file, the app around it, and signed-in clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402

from tether.feedback.app import create_app  # noqa: E402
from tether.storage import FeedbackStore  # noqa: E402

ADMIN_TOKEN = "admin-secret-token"


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture
def store(db_url) -> Iterator[FeedbackStore]:
    s = FeedbackStore(db_url)
    s.set_admin_token(ADMIN_TOKEN)
    yield s
    s.close()


@pytest.fixture
def client(store) -> Iterator[TestClient]:
    with TestClient(create_app(store, max_body_bytes=1024 * 1024)) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(client: TestClient, token: str) -> None:
    """Signs the client's cookie jar in with a token, as the login form does (a session cookie)."""
    client.cookies.clear()
    response = client.post("/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text


def make_campaign(client: TestClient, admin: dict[str, str], name: str = "c", kind: str = "rank", items: list | None = None, **extra) -> dict:
    if items is None:
        items = [{"prompt": f"prompt {i}", "completions": [f"answer {i}.{j}" for j in range(3)], "id": f"i{i}"} for i in range(3)]
    body = {"name": name, "kind": kind, "items": items, **extra}
    response = client.post("/api/campaigns", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()


def make_labeler(client: TestClient, admin: dict[str, str], name: str) -> dict[str, str]:
    response = client.post("/api/labelers", json={"name": name}, headers=admin)
    assert response.status_code == 201, response.text
    return bearer(response.json()["token"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    store: FeedbackStore


@pytest.fixture
def live_server(store) -> Iterator[LiveServer]:
    """The app served by uvicorn on loopback, in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    yield LiveServer(url=f"http://127.0.0.1:{port}", store=store)
    server.should_exit = True
    thread.join(timeout=10)
