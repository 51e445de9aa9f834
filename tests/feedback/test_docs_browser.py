"""/docs in headless Chromium: Swagger UI renders from the app's own files under the strict CSP."""

from __future__ import annotations

import httpx

from browser_kit import BROWSER_MARKS, browser  # noqa: F401 (fixture)

pytestmark = BROWSER_MARKS


def test_docs_page_keeps_a_strict_csp(live_server):
    response = httpx.get(live_server.url + "/docs")
    csp = response.headers["content-security-policy"]
    assert response.status_code == 200 and "cdn" not in response.text.lower()
    assert "script-src 'self' 'sha256-" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert httpx.get(live_server.url + "/static/docs/swagger-ui-bundle.js").status_code == 200


def test_docs_render_swagger_ui_without_csp_errors(live_server, browser):
    messages: list[str] = []
    outside: list[str] = []
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.on("console", lambda msg: messages.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: messages.append(f"pageerror: {exc}"))
    page.on("request", lambda req: outside.append(req.url) if not req.url.startswith((live_server.url, "data:")) else None)
    page.goto(live_server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", state="attached")  # the operations, read from /openapi.json
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("tether feedback")
    assert page.locator(".swagger-ui .opblock").count() > 20
    assert page.get_by_text("/api/assignments/{assignment_id}/label", exact=True).count() >= 1
    assert not [m for m in messages if "Content Security Policy" in m or "Refused" in m], messages
    assert not [m for m in messages if m.startswith(("error", "pageerror"))], messages
    assert outside == []
