"""Who is calling: the admin, a labeler, or nobody.

Scripts send their token as `Authorization: Bearer TOKEN`. Browsers sign in with the token once
(`POST /login`) and then carry a session id in an HTTP-only cookie: signing out ends the session
on the server, and the admin can end a labeler's sessions, so a copied cookie stops working while
the token still signs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, HTTPException, Request

from tether.storage import FeedbackStore, Labeler

COOKIE = "tether_session"
MAX_CREDENTIAL = 200  # longer tokens or session ids are not looked up


@dataclass(frozen=True)
class Principal:
    """The signed-in caller; `labeler` is set for labelers only, `session_id` for a browser session."""

    role: Literal["admin", "labeler"]
    name: str
    labeler: Labeler | None = None
    session_id: str | None = None


def get_store(request: Request) -> FeedbackStore:
    """The app's store (a FastAPI dependency)."""
    return request.app.state.store


def request_token(request: Request) -> str | None:
    """The token of a request's `Authorization: Bearer` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def resolve_token(store: FeedbackStore, token: str | None) -> Principal | None:
    """Returns who a token belongs to, or None for a missing, wrong or disabled token."""
    if not token or len(token) > MAX_CREDENTIAL:
        return None
    if store.is_admin_token(token):
        return Principal(role="admin", name="admin")
    labeler = store.labeler_by_token(token)
    return Principal(role="labeler", name=labeler.name, labeler=labeler) if labeler else None


def resolve_session(store: FeedbackStore, session_id: str | None) -> Principal | None:
    """Returns who a browser session belongs to, or None for a missing, ended or expired session."""
    if not session_id or len(session_id) > MAX_CREDENTIAL:
        return None
    found = store.signed_in(session_id)
    if found is None:
        return None
    if found.labeler is None:
        return Principal(role="admin", name="admin", session_id=session_id)
    return Principal(role="labeler", name=found.labeler.name, labeler=found.labeler, session_id=session_id)


def resolve_request(store: FeedbackStore, request: Request) -> Principal | None:
    """Who is calling: the Bearer token when the request has one, else the session cookie."""
    token = request_token(request)
    if token is not None:
        return resolve_token(store, token)
    return resolve_session(store, request.cookies.get(COOKIE))


def signed_in(request: Request, store: FeedbackStore = Depends(get_store)) -> Principal:
    """Dependency: any signed-in caller.

    Raises:
        HTTPException: 401 without a valid token or session.
    """
    principal = resolve_request(store, request)
    if principal is None:
        raise HTTPException(401, "sign in with a token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def admin_only(principal: Principal = Depends(signed_in)) -> Principal:
    """Dependency: the admin.

    Raises:
        HTTPException: 403 for labelers.
    """
    if principal.role != "admin":
        raise HTTPException(403, "admin only")
    return principal


def labeler_only(principal: Principal = Depends(signed_in)) -> Labeler:
    """Dependency: a labeler (the admin does not label: add a labeler for yourself).

    Raises:
        HTTPException: 403 for the admin.
    """
    if principal.labeler is None:
        raise HTTPException(403, "labelers only: add a labeler for yourself to label")
    return principal.labeler
