"""Who is calling: the admin, a labeler, or nobody. Tokens come as `Authorization: Bearer` or a cookie."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, HTTPException, Request

from tether.storage import FeedbackStore, Labeler

COOKIE = "tether_token"


@dataclass(frozen=True)
class Principal:
    """The signed-in caller; `labeler` is set for labelers only."""

    role: Literal["admin", "labeler"]
    name: str
    labeler: Labeler | None = None


def get_store(request: Request) -> FeedbackStore:
    """The app's store (a FastAPI dependency)."""
    return request.app.state.store


def request_token(request: Request) -> str | None:
    """The token of a request: the Bearer header first, then the sign-in cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE) or None


def resolve_token(store: FeedbackStore, token: str | None) -> Principal | None:
    """Returns who a token belongs to, or None for a missing, wrong or disabled token."""
    if not token or len(token) > 200:
        return None
    if store.is_admin_token(token):
        return Principal(role="admin", name="admin")
    labeler = store.labeler_by_token(token)
    return Principal(role="labeler", name=labeler.name, labeler=labeler) if labeler else None


def signed_in(request: Request, store: FeedbackStore = Depends(get_store)) -> Principal:
    """Dependency: any signed-in caller.

    Raises:
        HTTPException: 401 without a valid token.
    """
    principal = resolve_token(store, request_token(request))
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
