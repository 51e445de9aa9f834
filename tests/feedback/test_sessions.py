"""Browser sign-in: a session id in the cookie, ended by signing out or by the admin; Secure behind TLS."""

from __future__ import annotations

import threading
import time

import httpx

from conftest import ADMIN_TOKEN, free_port, make_labeler
from tether.feedback.app import create_app
from tether.feedback.auth import COOKIE
from tether.feedback.cli import _parser, server_config


def _use(client, session: str) -> None:
    """The client's only cookie is this session's (as in another browser that copied it)."""
    client.cookies.clear()
    client.cookies.set(COOKIE, session)


def _login(client, token: str) -> str:
    response = client.post("/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303
    return response.cookies[COOKIE]


def test_the_cookie_holds_a_session_not_the_token(client, admin):
    token = make_labeler(client, admin, "ann")["Authorization"].split()[1]
    session = _login(client, token)
    assert session != token and token not in client.cookies.get(COOKIE, "")
    assert client.get("/queue").status_code == 200


def test_signing_out_ends_the_session_on_the_server(client, admin):
    token = make_labeler(client, admin, "ann")["Authorization"].split()[1]
    session = _login(client, token)
    client.post("/logout", follow_redirects=False)
    # a copy of the cookie (another tab, a stolen cookie) no longer signs in ...
    _use(client, session)
    assert client.get("/queue", follow_redirects=False).headers["location"] == "/login"
    assert client.get("/api/me").status_code == 401
    # ... while the token still does
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "ann"
    _login(client, token)
    assert client.get("/queue").status_code == 200


def test_admin_ends_a_labelers_sessions(client, admin, store):
    token = make_labeler(client, admin, "ann")["Authorization"].split()[1]
    sessions = [_login(client, token) for _ in range(2)]  # two browsers
    ann_id = store.labeler_by_name("ann").id
    ended = client.delete(f"/api/labelers/{ann_id}/sessions", headers=admin)
    assert ended.status_code == 200 and ended.json() == {"ended": 2}
    for session in sessions:
        _use(client, session)
        assert client.get("/api/me").status_code == 401
    # the same from the admin page
    session = _login(client, token)
    _login(client, ADMIN_TOKEN)
    assert client.post(f"/admin/labelers/{ann_id}/sessions", follow_redirects=False).status_code == 303
    _use(client, session)
    assert client.get("/api/me").status_code == 401
    assert client.delete(f"/api/labelers/{ann_id}/sessions", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def _serve(store, *flags: str):
    """The app served as `tether label serve FLAGS` would (uvicorn with proxy headers), in a thread."""
    import uvicorn

    port = free_port()
    args = _parser().parse_args(["serve", "--port", str(port), *flags])
    server = uvicorn.Server(server_config(create_app(store, secure_cookies=args.secure_cookies), args))
    server.config.log_level = "warning"
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    return server, thread, f"http://127.0.0.1:{port}"


def _login_cookie(url: str, headers: dict[str, str] | None = None) -> str:
    response = httpx.post(url + "/login", data={"token": ADMIN_TOKEN}, headers=headers or {})
    assert response.status_code == 303
    return response.headers["set-cookie"].lower()


def test_cookie_is_secure_behind_a_trusted_tls_proxy(store):
    server, thread, url = _serve(store)  # the default trusts a proxy on 127.0.0.1
    try:
        assert "secure" in _login_cookie(url, {"X-Forwarded-Proto": "https"}).split("; ")
        assert "secure" not in _login_cookie(url).split("; ")  # plain HTTP, no proxy: a Secure cookie would be lost
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_forwarded_proto_from_an_untrusted_address_is_ignored(store):
    server, thread, url = _serve(store, "--forwarded-allow-ips", "10.9.8.7")
    try:
        assert "secure" not in _login_cookie(url, {"X-Forwarded-Proto": "https"}).split("; ")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_secure_cookies_setting_always_marks_the_cookie(store):
    server, thread, url = _serve(store, "--secure-cookies", "--forwarded-allow-ips", "10.9.8.7")
    try:
        assert "secure" in _login_cookie(url).split("; ")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
