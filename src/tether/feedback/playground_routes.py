"""The jobs API (progress of the worker's jobs) and the playground: its page, its generate and thumbs calls.

Nothing here runs a model: a prompt becomes a `generate` job that `tether label worker` runs, and the page
polls `GET /api/jobs/{id}` for the answers. A thumb takes the answer's text from the stored job (never from
the request) and stores it in the playground's thumbs campaign, the item tagged with the model's name.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from tether.feedback.auth import Principal, admin_only, get_store, signed_in
from tether.feedback.playground import PlaygroundConfig
from tether.feedback.schemas import JobOut, PlaygroundIn, RowId, ThumbAck, ThumbIn
from tether.feedback.service import WORKER_SEEN_S
from tether.feedback.templating import render
from tether.storage import FeedbackStore, Job, JobQueue, JobStatus, Labeler, NewItem, NotFound

api_router = APIRouter(prefix="/api")
pages_router = APIRouter(include_in_schema=False)

ADMIN_LABELER = "admin (playground)"  # the admin's thumbs are stored under this labeler (it cannot sign in)
THUMBS_GUIDELINES = "Thumbs given in the playground: up for a good answer, down for a bad one. Items are tagged with the model that wrote them."


def job_title(job: Job) -> str:
    """What a job does, in a few words (for the jobs list)."""
    p = job.params
    if job.kind == "sample":
        return f"sample {p.get('k')} completions for {len(p.get('prompts', []))} prompts with {p.get('model_path')} -> campaign {p.get('name')!r}"
    if job.kind == "generate":
        prompt = str(p.get("prompt", ""))
        return f"playground: {prompt[:80]}{'...' if len(prompt) > 80 else ''} ({len(p.get('models', []))} models)"
    if job.kind == "respond":
        return f"red-team answer with {p.get('model_path')}"
    return job.kind


def job_out(job: Job) -> JobOut:
    """API view of a job (its parameters stay on the server)."""
    return JobOut(
        id=job.id, kind=job.kind, title=job_title(job), status=job.status.value, progress=job.progress, message=job.message,
        error=job.error, result=job.result, claimed_by=job.claimed_by, attempts=job.attempts, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
    )


def submitter(principal: Principal) -> str:
    """How a job records who queued it: "admin" or "labeler:ID"."""
    return "admin" if principal.labeler is None else f"labeler:{principal.labeler.id}"


def _visible_job(store: FeedbackStore, job_id: int, principal: Principal) -> Job:
    """The job, for the admin or the labeler who queued it (others get 404, as for what does not exist)."""
    job = JobQueue(store).get(job_id)
    if principal.role != "admin" and job.submitted_by != submitter(principal):
        raise NotFound(f"job {job_id} not found")
    return job


def get_playground(request: Request) -> PlaygroundConfig:
    """The playground configuration (a FastAPI dependency).

    Raises:
        HTTPException: 404 when the server was started without `--playground`.
    """
    playground = getattr(request.app.state, "playground", None)
    if playground is None:
        raise HTTPException(404, "no playground here: start the server with `tether label serve --playground FILE`")
    return playground


@api_router.get("/jobs", response_model=list[JobOut], tags=["admin"])
def get_jobs(limit: int = Query(20, ge=1, le=200), _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[JobOut]:
    """The newest jobs of the worker queue, with their progress."""
    return [job_out(j) for j in JobQueue(store).list(limit)]


@api_router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: RowId, principal: Principal = Depends(signed_in), store: FeedbackStore = Depends(get_store)) -> JobOut:
    """One job (the admin: any; a labeler: the jobs they queued)."""
    return job_out(_visible_job(store, job_id, principal))


@api_router.post("/playground/generate", response_model=JobOut, status_code=202, tags=["playground"])
def post_playground_generate(
    body: PlaygroundIn,
    principal: Principal = Depends(signed_in),
    store: FeedbackStore = Depends(get_store),
    playground: PlaygroundConfig = Depends(get_playground),
) -> JobOut:
    """Queues a `generate` job: every playground model answers the prompt (poll `GET /api/jobs/{id}`); with `mine`, the
    shared policy and the labeller's own adapter of the playground's `personal` run."""
    if not body.prompt.strip():
        raise HTTPException(422, "prompt: must not be blank")
    models = prompting = None
    if body.mine:
        if principal.labeler is None:
            raise HTTPException(422, "mine: only a labeller has a model of their own")
        models, prompting = playground.personal_models(principal.labeler.name)
    return job_out(JobQueue(store).submit("generate", playground.job_params(body.prompt, models, prompting), submitted_by=submitter(principal)))


def _thumbs_labeler(store: FeedbackStore, principal: Principal) -> Labeler:
    if principal.labeler is not None:
        return principal.labeler
    labeler = store.labeler_by_name(ADMIN_LABELER)
    if labeler is None:
        labeler = store.add_labeler(ADMIN_LABELER).labeler  # the token is never shown, and sign-in is disabled below
        store.set_labeler_active(labeler.id, False)
    return labeler


@api_router.post("/playground/thumbs", response_model=ThumbAck, tags=["playground"])
def post_playground_thumb(
    body: ThumbIn,
    principal: Principal = Depends(signed_in),
    store: FeedbackStore = Depends(get_store),
    playground: PlaygroundConfig = Depends(get_playground),
) -> ThumbAck:
    """Stores a thumb on one answer of a finished playground job in the thumbs campaign (created on first use)."""
    job = _visible_job(store, body.job_id, principal)
    if job.kind != "generate" or job.status != JobStatus.DONE:
        raise HTTPException(409, f"job_id: job {job.id} is not a finished playground job ({job.status.value})")
    answer = next((a for a in job.result["answers"] if a["name"] == body.model), None)
    if answer is None:
        raise HTTPException(422, f"model: job {job.id} has no answer from {body.model!r}")
    path = next((m["path"] for m in job.params.get("models", []) if m["name"] == body.model), None)
    meta = {"kl": answer.get("kl"), "path": path, "reward": answer.get("reward"), "judge": answer.get("judge"), "job": job.id}
    item = NewItem(prompt=job.result["prompt"], completions=[answer["text"]], external_id=f"job-{job.id}:{answer['name']}", model=answer["name"], meta=meta)
    labeler = _thumbs_labeler(store, principal)
    label = store.add_thumb(playground.campaign, item, labeler.id, body.thumb, guidelines=THUMBS_GUIDELINES)
    campaign = store.campaign_by_name(playground.campaign)
    return ThumbAck(campaign_id=campaign.id, campaign=campaign.name, item_id=label.item_id, label_id=label.id, updated=label.updated_at != label.created_at)


@pages_router.get("/playground")
def playground_page(request: Request, principal: Principal = Depends(signed_in), store: FeedbackStore = Depends(get_store)) -> Response:
    """Type a prompt; see the SFT model, the aligned policy and the checkpoints between them answer it."""
    playground = getattr(request.app.state, "playground", None)
    if playground is None:
        return render(request, "error.html", status_code=404, status=404,
                      message="no playground here: start the server with `tether label serve --playground FILE`")
    models = playground.models
    by_kl = sorted(range(len(models)), key=lambda i: (models[i].kl if models[i].kl is not None else float("inf"), i))
    slider = [models[i] for i in by_kl]
    slider_json = json.dumps([{"name": m.name, "kl": m.kl} for m in slider])  # escaped by the template, read by playground.js
    worker_running = JobQueue(store).worker_seen_within(WORKER_SEEN_S)
    return render(request, "playground.html", principal=principal, playground=playground, models=models, slider=slider, slider_json=slider_json,
                  worker_running=worker_running, mine=False, roles=("SFT / reference", "aligned policy"))


@pages_router.get("/my-model")
def my_model_page(request: Request, principal: Principal = Depends(signed_in), store: FeedbackStore = Depends(get_store)) -> Response:
    """A labeller's own model (their adapter of the `personal` run) beside the shared one, with thumbs on either."""
    playground = getattr(request.app.state, "playground", None)
    if playground is None or playground.personal is None:
        return render(request, "error.html", status_code=404, status=404,
                      message="no personal models here: start the server with `tether label serve --playground FILE` whose file names a `personal` run")
    if principal.labeler is None:
        return render(request, "error.html", status_code=404, status=404, message="the admin has no model of their own: sign in as a labeller")
    models, _ = playground.personal_models(principal.labeler.name)
    worker_running = JobQueue(store).worker_seen_within(WORKER_SEEN_S)
    return render(request, "playground.html", principal=principal, playground=playground, models=models, slider=models, slider_json="[]",
                  worker_running=worker_running, mine=True, roles=("shared model", "your model"))
