"""Request bodies: the size limit counts streamed bytes (413), and answers are typed strictly (422 naming the field)."""

from __future__ import annotations

import httpx
import pytest

from conftest import make_campaign, make_labeler

MIB = 1024 * 1024


def _chunks(total: int, chunk: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield b"x" * min(chunk, total - sent)
        sent += chunk


def test_chunked_body_over_the_limit_is_413_on_a_live_server(live_server, admin):
    """40 MiB without Content-Length (chunked) against the default 32 MiB limit."""
    with httpx.Client(base_url=live_server.url, headers={**admin, "Content-Type": "application/json"}, timeout=60) as c:
        response = c.post("/api/campaigns", content=_chunks(40 * MIB))
        assert "content-length" not in response.request.headers and response.request.headers["transfer-encoding"] == "chunked"
        assert response.status_code == 413 and response.json() == {"detail": "request body too large"}
        # a form upload the same way, and a chunked body under the limit is read as usual
        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="c.jsonl"\r\n\r\n'
        upload = c.post("/admin/campaigns", content=iter([head, *_chunks(40 * MIB)]), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert upload.status_code == 413
        small = c.post("/api/campaigns", content=iter([b'{"name": "c", "kind": "rank", "items": []}']))
        assert small.status_code == 201


def test_declared_body_over_the_limit_is_413(client, admin):
    response = client.post("/api/campaigns", content=b"x" * (2 * MIB), headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(
    "answer, field",
    [
        ({"ranks": ["1", "2", "3"]}, ["body", "ranks", 0]),
        ({"ranks": [True, 2, 3]}, ["body", "ranks", 0]),
        ({"ranks": [1.5, 2, 3]}, ["body", "ranks", 0]),
        ({"ranks": [1, 2, 3], "unusable": ["yes", False, False]}, ["body", "unusable", 0]),
        ({"ranks": [1, 2, 3], "unusable": [1, 0, 0]}, ["body", "unusable", 0]),
        ({"ranks": [1, 2, 3], "duration_ms": "100"}, ["body", "duration_ms"]),
    ],
)
def test_answers_are_not_coerced(client, admin, answer, field):
    campaign = make_campaign(client, admin)
    ann = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()
    response = client.post(f"/api/assignments/{task['assignment_id']}/label", json=answer, headers=ann)
    assert response.status_code == 422
    assert field in [error["loc"] for error in response.json()["detail"]]
    assert client.get(f"/api/campaigns/{campaign['id']}/labels", headers=admin).json() == []


@pytest.mark.parametrize("thumb", [True, "1", 1.0])
def test_thumb_is_0_or_1_exactly(client, admin, thumb):
    campaign = make_campaign(client, admin, kind="thumbs", items=[{"prompt": "p", "completions": ["a"]}])
    ann = make_labeler(client, admin, "ann")
    task = client.get(f"/api/campaigns/{campaign['id']}/next", headers=ann).json()
    response = client.post(f"/api/assignments/{task['assignment_id']}/label", json={"thumb": thumb}, headers=ann)
    assert response.status_code == 422 and ["body", "thumb"] in [e["loc"] for e in response.json()["detail"]]
    assert client.post(f"/api/assignments/{task['assignment_id']}/label", json={"thumb": 1}, headers=ann).status_code == 200


def test_admin_bodies_are_strict_too(client, admin):
    body = {"name": "c", "kind": "rank", "labelers_per_item": "2", "items": []}
    response = client.post("/api/campaigns", json=body, headers=admin)
    assert response.status_code == 422 and ["body", "labelers_per_item"] in [e["loc"] for e in response.json()["detail"]]
    make_labeler(client, admin, "ann")
    response = client.patch("/api/labelers/1", json={"active": "no"}, headers=admin)
    assert response.status_code == 422 and ["body", "active"] in [e["loc"] for e in response.json()["detail"]]
    assert client.get("/api/labelers", headers=admin).json()[0]["active"] is True
