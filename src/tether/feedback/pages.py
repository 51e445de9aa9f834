"""Server-rendered pages: sign-in, the labeler's queue and task pages, and the admin pages."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response

from tether.errors import TetherError
from tether.feedback.auth import COOKIE, Principal, admin_only, get_store, labeler_only, resolve_request, resolve_token
from tether.feedback.campaign_file import parse_campaign_text, parse_prompt_lines
from tether.feedback.export import ALLOWED, AUTO_KIND
from tether.feedback.schemas import RowId
from tether.feedback.playground_routes import job_out
from tether.feedback.review import ReviewFilters
from tether.feedback.service import agreement_out, answer_summary, current_task, progress_out, quality_out, review_filters, review_page, task_out
from tether.feedback.tasks import HARM_LEVELS, KIND_TITLES, item_problem, expand_items
from tether.feedback.templating import render
from tether.storage import Conflict, FeedbackStore, JobQueue, LabelData, Labeler, NewItem, NotFound, TaskKind
from tether.storage.store import SESSION_MAX_AGE_S

router = APIRouter(include_in_schema=False)
MOST_DISAGREED = 10  # items listed under the campaign's agreement, least agreed first
JOBS_SHOWN = 20  # newest jobs on the admin page


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/")
def home(request: Request, store: FeedbackStore = Depends(get_store)) -> Response:
    """Sends the admin to /admin, a labeler to /queue, anyone else to /login."""
    principal = resolve_request(store, request)
    if principal is None:
        return _redirect("/login")
    return _redirect("/admin" if principal.role == "admin" else "/queue")


@router.get("/login")
def login_page(request: Request) -> Response:
    """The sign-in form."""
    return render(request, "login.html", error=None)


def secure_cookies(request: Request) -> bool:
    """Whether the sign-in cookie gets `Secure`: the request came over HTTPS (directly, or through a
    trusted proxy's X-Forwarded-Proto, which uvicorn applies), or the app was told to always set it."""
    return request.url.scheme == "https" or bool(getattr(request.app.state, "secure_cookies", False))


@router.post("/login")
def login(request: Request, token: str = Form(..., max_length=200), store: FeedbackStore = Depends(get_store)) -> Response:
    """Checks a token and starts a session, whose id goes in an HTTP-only, same-site cookie."""
    principal = resolve_token(store, token.strip())
    if principal is None:
        return render(request, "login.html", status_code=401, error="unknown or disabled token")
    session_id = store.create_session(principal.labeler.id if principal.labeler is not None else None)
    response = _redirect("/")
    response.set_cookie(COOKIE, session_id, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="strict", secure=secure_cookies(request))
    return response


@router.post("/logout")
def logout(request: Request, store: FeedbackStore = Depends(get_store)) -> Response:
    """Ends the session on the server (the cookie stops working, even a copy of it) and forgets the cookie."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        store.end_session(session_id)
    response = _redirect("/login")
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=secure_cookies(request))
    return response


# ---- labelers ----------------------------------------------------------------------------------


@router.get("/queue")
def queue(request: Request, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """The labeler's campaigns with what is left to do, and the items they skipped (to take back)."""
    rows = []
    for campaign in store.list_campaigns(labeler_id=labeler.id):
        if campaign.status == "active":
            done = len(store.list_labels(campaign.id, labeler_id=labeler.id))
            rows.append((campaign, store.count_available(campaign.id, labeler.id), done, store.list_skipped(campaign.id, labeler.id)))
    playground = request.app.state.playground
    return render(request, "queue.html", labeler=labeler, rows=rows, titles=KIND_TITLES, playground=playground is not None,
                  personal=playground is not None and playground.personal is not None)


@router.post("/queue/unskip/{assignment_id}")
def unskip(assignment_id: RowId, request: Request, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Takes a skipped item back and opens it (it is the current task of its campaign again)."""
    try:
        task = store.unskip(assignment_id, labeler.id)
    except Conflict as exc:
        return render(request, "error.html", status_code=409, status=409, message=str(exc))
    return _redirect(f"/label/{task.item.campaign_id}")


@router.get("/label/{campaign_id}")
def label_page(
    campaign_id: RowId, request: Request, skipped: RowId | None = None, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)
) -> Response:
    """The labeler's current task in a campaign, with the guidelines beside it (`?skipped=ID`: offers to undo that skip)."""
    campaign = store.get_campaign(campaign_id)
    if not store.can_label(campaign_id, labeler.id):
        raise NotFound(f"campaign {campaign_id} not found")
    if campaign.status != "active":
        return render(request, "error.html", status_code=404, status=404, message="this campaign is closed")
    task = current_task(store, campaign, labeler)
    just_skipped = next((t for t in store.list_skipped(campaign_id, labeler.id) if t.assignment_id == skipped), None) if skipped else None
    return render(
        request, "label.html", labeler=labeler, campaign=campaign, task=task, just_skipped=just_skipped, harm_levels=HARM_LEVELS, titles=KIND_TITLES
    )


@router.get("/history")
def history(request: Request, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """The labeler's own answers, newest first, each with a link to revise it."""
    rows = [(a, answer_summary(a.campaign_kind, a.label.data, a.task.display_order)) for a in store.answered(labeler.id)]
    return render(request, "history.html", labeler=labeler, rows=rows, titles=KIND_TITLES)


@router.get("/history/{assignment_id}")
def revise_page(assignment_id: RowId, request: Request, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """One answered item as the labeler saw it, filled in with their answer, to revise (earlier versions below)."""
    found = store.answered(labeler.id, assignment_id=assignment_id)
    if not found:
        raise NotFound(f"answered item {assignment_id} not found")
    answered = found[0]
    campaign = store.get_campaign(answered.campaign_id, count_items=False)
    versions = [(v, answer_summary(campaign.kind, v.data, answered.task.display_order)) for v in store.label_history(answered.label.id)]
    return render(
        request,
        "label.html",
        labeler=labeler,
        campaign=campaign,
        task=task_out(campaign, answered.task, 0),
        revise=answered,
        prefill=_prefill(answered.label.data),
        current_summary=answer_summary(campaign.kind, answered.label.data, answered.task.display_order),
        versions=versions,
        harm_levels=HARM_LEVELS,
        titles=KIND_TITLES,
    )


def _prefill(data: LabelData) -> dict[str, object]:
    """The stored answer as the task page's script reads it (fields of the API body)."""
    return {
        "ranks": data.ranks,
        "unusable": data.unusable,
        "choice": data.choice.value if data.choice is not None else None,
        "thumb": data.thumb,
        "harm": data.harm,
        "prompt": data.prompt,
        "response": data.response,
        "better_response": data.better_response,
        "note": data.note,
    }


# ---- admin -------------------------------------------------------------------------------------


def _admin_page(request: Request, store: FeedbackStore, new_token: tuple[str, str] | None = None, error: str | None = None, status: int = 200) -> Response:
    campaigns = [(c, store.progress(c.id)) for c in store.list_campaigns()]
    jobs = [job_out(j) for j in JobQueue(store).list(JOBS_SHOWN)]
    return render(
        request, "admin.html", status_code=status, campaigns=campaigns, labelers=store.list_labelers(), new_token=new_token, error=error, titles=KIND_TITLES,
        jobs=jobs, playground=request.app.state.playground is not None,
    )


@router.get("/admin")
def admin(request: Request, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Campaigns with progress, labelers, and forms to add both."""
    return _admin_page(request, store)


@router.post("/admin/labelers")
def admin_add_labeler(
    request: Request, name: str = Form(..., min_length=1, max_length=200), _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)
) -> Response:
    """Adds a labeler and shows the sign-in token once."""
    try:
        created = store.add_labeler(name.strip())
    except Conflict as exc:
        return _admin_page(request, store, error=str(exc), status=409)
    return _admin_page(request, store, new_token=(created.labeler.name, created.token))


@router.post("/admin/labelers/{labeler_id}/token")
def admin_rotate_token(labeler_id: RowId, request: Request, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Gives a labeler a new token and shows it once."""
    token = store.rotate_token(labeler_id)
    name = next(lab.name for lab in store.list_labelers() if lab.id == labeler_id)
    return _admin_page(request, store, new_token=(name, token))


@router.post("/admin/labelers/{labeler_id}/sessions")
def admin_end_sessions(labeler_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Signs a labeler out of every browser (their token still signs in)."""
    store.end_sessions(labeler_id)
    return _redirect("/admin")


@router.post("/admin/labelers/{labeler_id}/active")
def admin_set_active(labeler_id: RowId, active: bool = Form(...), _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Enables or disables a labeler."""
    store.set_labeler_active(labeler_id, active)
    return _redirect("/admin")


@router.get("/admin/campaigns/new")
def new_campaign_page(request: Request, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """The form to create a campaign."""
    return _new_campaign_form(request, store, form={})


def _new_campaign_form(request: Request, store: FeedbackStore, form: dict, error: str | None = None, status: int = 200) -> Response:
    labelers = [lab.name for lab in store.list_labelers() if lab.active]
    return render(request, "campaign_new.html", status_code=status, error=error, form=form, kinds=list(TaskKind), titles=KIND_TITLES, labelers=labelers)


def _form_items(kind: TaskKind, upload_text: str, prompts_text: str) -> list[NewItem]:
    """Items from an uploaded campaign file, or pasted prompts (red-team seeds).

    Raises:
        TetherError: nothing usable was given.
    """
    if upload_text.strip():
        return parse_campaign_text(upload_text, kind, source="uploaded file")
    items = [NewItem(prompt=p) for p in parse_prompt_lines(prompts_text)]
    for number, item in enumerate(items, start=1):
        problem = item_problem(kind, item)
        if problem:
            raise TetherError(f"prompt {number}: {problem} (upload a campaign file with completions, or give a model to sample from)")
    if not items and kind != TaskKind.REDTEAM:
        raise TetherError("give a campaign file or prompts")
    return items


def _sampling_job(store: FeedbackStore, form: dict, prompts: list[str]) -> int:
    """Queues the worker job that samples K completions per prompt and then creates the campaign.

    Raises:
        TetherError: K does not fit the task kind. Conflict: the campaign name is taken. NotFound: a member is
            not a labeler.
    """
    kind = TaskKind(form["kind"])
    problem = item_problem(kind, NewItem(prompt="p", completions=["c"] * form["k"]))
    if problem:
        raise TetherError(f"k: {problem}")
    for member in form["members"]:
        if store.labeler_by_name(member) is None:
            raise NotFound(f"members: labeler {member!r} not found")
    try:
        store.campaign_by_name(form["name"])
    except NotFound:
        params = {**form, "prompts": prompts}
        return JobQueue(store).submit("sample", params, submitted_by="admin").id
    raise Conflict(f"campaign {form['name']!r} already exists")


@router.post("/admin/campaigns")
async def create_campaign_page(
    request: Request,
    name: str = Form(..., min_length=1, max_length=200),
    kind: TaskKind = Form(...),
    labelers_per_item: int = Form(1, ge=1, le=100),
    guidelines: str = Form("", max_length=100_000),
    prompts: str = Form("", max_length=5_000_000),
    model_path: str = Form("", max_length=1000),
    k: int = Form(2, ge=1, le=9),
    file: UploadFile | None = File(None),
    gold_file: UploadFile | None = File(None),
    gold_rate: float = Form(0.1, ge=0, le=1),
    members: list[str] = Form([]),
    _: Principal = Depends(admin_only),
    store: FeedbackStore = Depends(get_store),
) -> Response:
    """Creates a campaign from the form (with its gold items and members), then shows it; with pasted prompts
    and a model, queues the worker job that samples the completions and creates the campaign, then shows the
    jobs list."""
    form = {"name": name, "kind": kind.value, "labelers_per_item": labelers_per_item, "guidelines": guidelines, "prompts": prompts}
    form |= {"model_path": model_path, "k": k, "gold_rate": gold_rate, "members": members}
    try:
        upload = (await file.read()).decode("utf-8") if file is not None and file.filename else ""
        gold_upload = (await gold_file.read()).decode("utf-8") if gold_file is not None and gold_file.filename else ""
        gold_items = parse_campaign_text(gold_upload, kind, source="gold file", gold=True) if gold_upload.strip() else []
        pasted = parse_prompt_lines(prompts) if not upload.strip() else []
        if pasted and model_path.strip() and kind != TaskKind.REDTEAM:
            job_form = {**form, "name": name.strip(), "model_path": model_path.strip(), "gold_text": gold_upload if gold_items else ""}
            del job_form["prompts"]
            job_id = _sampling_job(store, job_form, pasted)
            return _redirect(f"/admin?job={job_id}#jobs")
        items = expand_items(kind, _form_items(kind, upload, prompts) + gold_items)
        campaign = store.create_campaign(
            name.strip(), kind, items, guidelines, labelers_per_item, model_path.strip() or None, gold_rate=gold_rate, members=members
        )
    except UnicodeDecodeError:
        return _new_campaign_form(request, store, form, error="the file is not UTF-8 text", status=400)
    except (TetherError, Conflict, NotFound) as exc:
        status = 409 if isinstance(exc, Conflict) else 404 if isinstance(exc, NotFound) else 400
        return _new_campaign_form(request, store, form, error=str(exc), status=status)
    return _redirect(f"/admin/campaigns/{campaign.id}")


@router.get("/admin/campaigns/{campaign_id}")
def campaign_page(campaign_id: RowId, request: Request, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """A campaign: progress, agreement, outliers, quality, members, export links, guidelines."""
    campaign = store.get_campaign(campaign_id)
    disagreed = review_page(store, campaign, ReviewFilters(disagreements=True), per_page=2**31).items
    disagreed = [entry for entry in disagreed if entry.item.gold is None]  # gold items are judged by the known answer
    disagreed = sorted(disagreed, key=lambda entry: entry.agreement if entry.agreement is not None else 1.0)[:MOST_DISAGREED]
    members = store.list_members(campaign_id)
    member_ids = {lab.id for lab in members}
    return render(
        request,
        "campaign.html",
        campaign=campaign,
        progress=progress_out(store, campaign_id),
        agreement=agreement_out(store, campaign),
        quality=quality_out(store, campaign),
        disagreed=disagreed,
        members=members,
        candidates=[lab for lab in store.list_labelers() if lab.id not in member_ids],
        export_kinds=sorted(k.value for k in ALLOWED[campaign.kind]),
        auto_kind=AUTO_KIND[campaign.kind].value,
        titles=KIND_TITLES,
    )


@router.post("/admin/campaigns/{campaign_id}")
def campaign_update(
    campaign_id: RowId,
    guidelines: str | None = Form(None, max_length=100_000),
    status: str | None = Form(None, pattern="^(active|closed)$"),
    model_path: str | None = Form(None, max_length=1000),
    gold_rate: float | None = Form(None, ge=0, le=1),
    fast_ms: int | None = Form(None, ge=0, le=86_400_000),
    _: Principal = Depends(admin_only),
    store: FeedbackStore = Depends(get_store),
) -> Response:
    """Saves guidelines, the gold rate or the fast-answer threshold; opens or closes the campaign."""
    store.update_campaign(campaign_id, guidelines=guidelines, status=status, model_path=model_path, gold_rate=gold_rate, fast_ms=fast_ms)
    return _redirect(f"/admin/campaigns/{campaign_id}")


@router.post("/admin/campaigns/{campaign_id}/members")
def campaign_add_member(
    campaign_id: RowId, labeler: str = Form(..., min_length=1, max_length=200), _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)
) -> Response:
    """Adds a labeler to the campaign's members."""
    store.add_members(campaign_id, [labeler])
    return _redirect(f"/admin/campaigns/{campaign_id}#members")


@router.post("/admin/campaigns/{campaign_id}/members/{labeler_id}/remove")
def campaign_remove_member(campaign_id: RowId, labeler_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Takes a labeler off the campaign's members."""
    labeler = next((lab for lab in store.list_members(campaign_id) if lab.id == labeler_id), None)
    if labeler is None:
        raise NotFound(f"labeler {labeler_id} is not a member of campaign {campaign_id}")
    store.remove_members(campaign_id, [labeler.name])
    return _redirect(f"/admin/campaigns/{campaign_id}#members")


@router.get("/admin/review")
def review_labels(
    request: Request,
    campaign: int = Query(..., ge=1, le=2**63 - 1),
    filters: ReviewFilters = Depends(review_filters),
    _: Principal = Depends(admin_only),
    store: FeedbackStore = Depends(get_store),
) -> Response:
    """The labels of a campaign item by item, with filters and pages."""
    chosen = store.get_campaign(campaign)
    result = review_page(store, chosen, filters)
    query = {"campaign": campaign, "labeler": filters.labeler or "", "item": filters.item or ""}
    query |= {name: "true" for name in ("disagreements", "flagged", "fast", "wrong_gold") if getattr(filters, name)}
    names = sorted({row.labeler for row in progress_out(store, campaign).labelers})
    return render(
        request,
        "review.html",
        campaign=chosen,
        campaigns=store.list_campaigns(),
        labeler_names=names,
        review=result,
        page_url=lambda n: "/admin/review?" + urlencode({**query, "page": n}),
        titles=KIND_TITLES,
    )
