"""Authorization on every route, escaping of untrusted text, security headers."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from tether.feedback.api import router as api_router
from tether.feedback.auth import admin_only, labeler_only, signed_in
from tether.feedback.pages import router as pages_router
from conftest import make_campaign, make_labeler, sign_in

PUBLIC = {"/", "/login", "/logout", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _depends_on(route: APIRoute, fn) -> bool:
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is fn:
            return True
        stack.extend(dependant.dependencies)
    return False


def _routes(app):
    """Every (method, route) of the app's routers (read from the routers: included routers may be lazy)."""
    routes = [r for r in app.routes if isinstance(r, APIRoute)] + list(api_router.routes) + list(pages_router.routes)
    seen = set()
    for route in routes:
        for method in sorted(route.methods):
            if (method, route.path) not in seen:
                seen.add((method, route.path))
                yield method, route


def _call(client, method, route, headers=None):
    path = route.path_format.replace("{campaign_id}", "1").replace("{assignment_id}", "1").replace("{labeler_id}", "1")
    kwargs = {"json": {}} if method in ("POST", "PATCH") and route.path.startswith("/api") else {}
    if method == "POST" and not route.path.startswith("/api"):
        kwargs = {"data": {}}
    return client.request(method, path, headers=headers or {}, follow_redirects=False, **kwargs)


def test_every_route_is_classified(client):
    assert sum(1 for _ in _routes(client.app)) > 30
    for _, route in _routes(client.app):
        protected = any(_depends_on(route, fn) for fn in (signed_in, admin_only, labeler_only))
        assert protected or route.path in PUBLIC, f"{route.path} has no access rule"


def test_every_protected_route_needs_a_token(client, admin):
    make_campaign(client, admin)
    checked = 0
    for method, route in _routes(client.app):
        if route.path in PUBLIC:
            continue
        response = _call(client, method, route)
        if route.path.startswith("/api"):
            assert response.status_code == 401, f"{method} {route.path}: {response.status_code}"
        else:
            assert response.status_code == 303 and response.headers["location"] == "/login", f"{method} {route.path}"
        checked += 1
    assert checked > 25


def test_labelers_get_403_on_admin_routes_and_admin_on_labeler_routes(client, admin):
    make_campaign(client, admin)
    labeler = make_labeler(client, admin, "ann")
    for method, route in _routes(client.app):
        if _depends_on(route, admin_only):
            assert _call(client, method, route, labeler).status_code == 403, f"{method} {route.path}"
        if _depends_on(route, labeler_only):
            assert _call(client, method, route, admin).status_code == 403, f"{method} {route.path}"


XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def test_model_text_is_escaped_on_every_page(client, admin):
    items = [{"prompt": XSS, "completions": [XSS + " one", XSS + " two"], "id": XSS}]
    campaign = make_campaign(client, admin, name="camp<script>", guidelines=XSS, items=items, labelers_per_item=2)
    labeler = make_labeler(client, admin, "ann<script>")
    sign_in(client, labeler["Authorization"].split()[1])
    pages = [client.get("/queue"), client.get(f"/label/{campaign['id']}")]
    sign_in(client, admin["Authorization"].split()[1])
    pages += [client.get("/admin"), client.get(f"/admin/campaigns/{campaign['id']}")]
    for page in pages:
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
    label_page = pages[1].text
    assert label_page.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") >= 4  # prompt, two completions, guidelines
    assert "default-src 'self'" in pages[1].headers["content-security-policy"]
    assert pages[1].headers["x-content-type-options"] == "nosniff"


def test_login_sets_an_http_only_cookie(client, admin):
    labeler = make_labeler(client, admin, "ann")
    token = labeler["Authorization"].split()[1]
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    response = client.post("/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/", follow_redirects=False).headers["location"] == "/queue"
    assert client.get("/admin").status_code == 403
    client.post("/logout")
    client.cookies.clear()
    assert client.get("/queue", follow_redirects=False).headers["location"] == "/login"


@pytest.mark.parametrize("path", ["/static/app.js", "/static/style.css"])
def test_static_files_are_served(client, path):
    assert client.get(path).status_code == 200
