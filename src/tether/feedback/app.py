"""The feedback web app: FastAPI with server-rendered pages, a JSON API, and bounded requests.

Run it with `tether label serve`; tests build it with `create_app(store)`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether import __version__
from tether.errors import TetherError
from tether.feedback.api import router as api_router
from tether.feedback.pages import router as pages_router
from tether.feedback.playground import PlaygroundConfig
from tether.feedback.playground_routes import api_router as jobs_api_router
from tether.feedback.playground_routes import pages_router as playground_pages_router
from tether.feedback.tasks import LabelError
from tether.feedback.templating import make_templates, render
from tether.storage import Conflict, FeedbackStore, InvalidValue, NotFound, Unavailable

HERE = Path(__file__).parent
MAX_BODY_BYTES = 32 * 1024 * 1024
RETRY_AFTER_S = 5  # what a 503 (database locked or full) asks clients to wait before sending again
CSP = "default-src 'self'; script-src {scripts}; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP.format(scripts="'self'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# errors answered with a status and their own message (the most specific class of an error wins)
ERROR_STATUS: dict[type[Exception], int] = {NotFound: 404, Conflict: 409, LabelError: 422, InvalidValue: 422, TetherError: 400}
# Swagger UI's files, from a package that ships them (the CSP allows no CDN): fastapi-offline has Swagger UI 5,
# which renders the OpenAPI 3.1 that FastAPI writes (swagger-ui-bundle's Swagger UI 4 shows "Unable to render")
SWAGGER_UI_FILES = resources.files("fastapi_offline") / "static"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: answers 413 to requests whose body exceeds `max_bytes` (declared or streamed).

    A streamed body (no Content-Length, e.g. chunked) is counted as it is read; the read that
    passes the limit fails. The app answers that failure itself (FastAPI makes it a 400 "error
    parsing the body"), so the answer it starts is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        too_large = started = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the rest of the app's answer to a body it could not read
            if too_large and not started:
                replaced = True
                await self._reject(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not started and not replaced:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"request body too large"}'
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    if status == 401:
        return RedirectResponse("/login", status_code=303)
    page = render(request, "error.html", status_code=status, status=status, message=message)
    page.headers.update(headers or {})
    return page


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def answer_with(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(request: Request, exc: Exception) -> Response:
            return _error(request, status, str(exc))

        return handler

    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, answer_with(status))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> Response:
        # the transaction was rolled back: the client keeps its answer and sends it again
        return _error(request, 503, f"the database cannot store this now: {exc}", {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": jsonable_errors(exc)}, status_code=422)
        return _error(request, 422, "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors()))


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    """Validation errors as plain JSON (location, message, type)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def with_inline_scripts_allowed(page: HTMLResponse) -> HTMLResponse:
    """Lets exactly the page's own inline scripts run, by their SHA-256 in the Content-Security-Policy
    (any other inline script stays blocked)."""
    hashes = [base64.b64encode(hashlib.sha256(script).digest()).decode() for script in INLINE_SCRIPT.findall(page.body)]
    page.headers["Content-Security-Policy"] = CSP.format(scripts=" ".join(["'self'"] + [f"'sha256-{h}'" for h in hashes]))
    return page


def _install_docs(app: FastAPI) -> None:
    """Interactive API docs at /docs: Swagger UI served from this app, not a CDN."""
    app.mount("/static/docs", StaticFiles(directory=str(SWAGGER_UI_FILES)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
            oauth2_redirect_url=None,
        )
        return with_inline_scripts_allowed(page)


def create_app(
    store: FeedbackStore, max_body_bytes: int = MAX_BODY_BYTES, secure_cookies: bool = False, playground: PlaygroundConfig | None = None
) -> FastAPI:
    """Builds the app around a store.

    Args:
        store: the feedback database (schema already created or upgraded).
        max_body_bytes: largest request body accepted (413 above).
        secure_cookies: always mark the sign-in cookie `Secure` (behind a TLS proxy whose
            X-Forwarded-Proto the server does not trust); it is set anyway on HTTPS requests.
        playground: the playground's models and scorers (`load_playground`); None: no playground page.

    Returns:
        The FastAPI app: pages at /, JSON API at /api, OpenAPI schema at /openapi.json, docs at /docs.
    """
    app = FastAPI(
        title="tether feedback",
        version=__version__,
        description="Collect human feedback on model outputs.",
        docs_url=None,  # /docs is served with local files below
        redoc_url=None,
    )
    app.state.store = store
    app.state.playground = playground
    app.state.templates = make_templates()
    app.state.secure_cookies = secure_cookies

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if _is_api(request) or request.url.path.startswith("/admin") or request.url.path.startswith("/label") or request.url.path == "/playground":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(pages_router)
    app.include_router(jobs_api_router)
    app.include_router(playground_pages_router)
    _install_docs(app)  # before /static, whose mount would take /static/docs too
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory tether.feedback.app:app_from_env`: the database from TETHER_DB,
    the assignment timeout in minutes from TETHER_ASSIGNMENT_TIMEOUT (default 30)."""
    minutes = float(os.environ.get("TETHER_ASSIGNMENT_TIMEOUT", "30"))
    return create_app(FeedbackStore(os.environ.get("TETHER_DB", "sqlite:///feedback.db"), assignment_timeout_s=minutes * 60))
