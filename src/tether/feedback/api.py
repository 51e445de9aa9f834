"""The JSON API under /api: everything the pages do, for scripts (schema at /openapi.json)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from tether.feedback.auth import Principal, admin_only, get_store, labeler_only, signed_in
from tether.feedback.export import ExportKind, ExportMode, export_records, labels_of, record_json, resolve_kind
from tether.feedback.quality import screen_labels
from tether.feedback.review import ReviewFilters
from tether.feedback.schemas import (
    AgreementOut,
    AnsweredOut,
    CampaignIn,
    CampaignOut,
    CampaignPatch,
    GenerateIn,
    GenerateOut,
    ItemsIn,
    LabelAck,
    LabelerCreated,
    LabelerIn,
    LabelerOut,
    LabelerPatch,
    LabelIn,
    LabelOut,
    MembersIn,
    MeOut,
    MyCampaignOut,
    ProgressOut,
    QualityOut,
    ReviewOut,
    RowId,
    SessionsEnded,
    SkippedOut,
    TaskOut,
)
from tether.feedback.service import (
    agreement_out,
    answered_out,
    campaign_out,
    create_campaign,
    current_task,
    generate_response,
    items_from_api,
    label_out,
    progress_out,
    quality_out,
    review_out,
    review_filters,
    review_page,
    skipped_out,
    submit_answer,
    submit_free,
    task_out,
)
from tether.storage import Campaign, FeedbackStore, Labeler, NotFound

router = APIRouter(prefix="/api")


def attachment(filename: str) -> str:
    """A Content-Disposition header value for any file name (RFC 6266): an ASCII fallback, and the
    name itself percent-encoded as UTF-8 (HTTP headers are Latin-1: a raw non-Latin name cannot be sent)."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _labeler_out(labeler: Labeler) -> LabelerOut:
    return LabelerOut.model_validate(labeler, from_attributes=True)


def _labeler_created(labeler: Labeler, token: str) -> LabelerCreated:
    return LabelerCreated.model_validate({**asdict(labeler), "token": token})


@router.get("/me", response_model=MeOut, tags=["session"])
def me(principal: Principal = Depends(signed_in)) -> MeOut:
    """Who the token belongs to."""
    return MeOut(role=principal.role, name=principal.name)


# ---- admin: campaigns --------------------------------------------------------------------------


@router.post("/campaigns", response_model=CampaignOut, status_code=201, tags=["admin"])
def post_campaign(body: CampaignIn, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> CampaignOut:
    """Creates a campaign from items (pair and thumbs items are split into units of work)."""
    return campaign_out(create_campaign(store, body))


@router.get("/campaigns", response_model=list[CampaignOut], tags=["admin"])
def get_campaigns(_: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[CampaignOut]:
    """Every campaign, newest first."""
    return [campaign_out(c) for c in store.list_campaigns()]


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut, tags=["admin"])
def get_campaign(campaign_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> CampaignOut:
    """One campaign."""
    return campaign_out(store.get_campaign(campaign_id))


@router.patch("/campaigns/{campaign_id}", response_model=CampaignOut, tags=["admin"])
def patch_campaign(
    campaign_id: RowId, body: CampaignPatch, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)
) -> CampaignOut:
    """Changes guidelines, status (active/closed) or the red-team model."""
    return campaign_out(store.update_campaign(campaign_id, **body.model_dump()))


@router.post("/campaigns/{campaign_id}/items", response_model=CampaignOut, tags=["admin"])
def post_items(campaign_id: RowId, body: ItemsIn, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> CampaignOut:
    """Appends items to a campaign."""
    campaign = store.get_campaign(campaign_id)
    store.add_items(campaign_id, items_from_api(campaign.kind, body.items))
    return campaign_out(store.get_campaign(campaign_id))


@router.get("/campaigns/{campaign_id}/progress", response_model=ProgressOut, tags=["admin"])
def get_progress(campaign_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> ProgressOut:
    """Items, labels given and wanted, and per-labeler counts."""
    return progress_out(store, campaign_id)


@router.get("/campaigns/{campaign_id}/agreement", response_model=AgreementOut, tags=["admin"])
def get_agreement(campaign_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> AgreementOut:
    """Pairwise agreement, Krippendorff's alpha (ordinal), per-labeler numbers and outliers."""
    return agreement_out(store, store.get_campaign(campaign_id))


@router.get("/campaigns/{campaign_id}/labels", response_model=list[LabelOut], tags=["admin"])
def get_labels(campaign_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[LabelOut]:
    """Every label of a campaign."""
    store.get_campaign(campaign_id)
    return [label_out(label) for label in store.list_labels(campaign_id)]


@router.get("/campaigns/{campaign_id}/export", tags=["admin"], response_class=StreamingResponse)
def get_export(
    campaign_id: RowId,
    mode: ExportMode = Query(ExportMode.CONSENSUS),
    kind: ExportKind = Query(ExportKind.AUTO),
    min_gold_accuracy: float | None = Query(None, ge=0, le=1, description="leave out labelers below this accuracy on gold items"),
    exclude_fast: bool = Query(False, description="leave out implausibly fast answers"),
    labeler: str | None = Query(None, max_length=200, description="only this labeler's own answers (mode all)"),
    _: Principal = Depends(admin_only),
    store: FeedbackStore = Depends(get_store),
) -> StreamingResponse:
    """The campaign as JSONL (pairs, rankings, thumbs or prompts); works while labeling goes on.
    Gold items are never exported. With `labeler`, one person's own answers (their personal data)."""
    campaign = store.get_campaign(campaign_id)
    chosen = resolve_kind(campaign.kind, kind)
    items = store.list_items(campaign_id)
    screened = screen_labels(campaign, items, store.list_labels(campaign_id), min_gold_accuracy, exclude_fast)
    if labeler is not None:
        records = list(export_records(campaign, items, labels_of(screened.labels, labeler), chosen, ExportMode.ALL))
    else:
        records = list(export_records(campaign, items, screened.labels, chosen, mode))

    def lines() -> Iterator[str]:
        for record in records:
            yield record_json(record) + "\n"

    filename = f"{campaign.name}.{chosen.value}.{mode.value}.jsonl"
    headers = {"Content-Disposition": attachment(filename)}
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)


@router.get("/campaigns/{campaign_id}/quality", response_model=QualityOut, tags=["admin"])
def get_quality(campaign_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> QualityOut:
    """Per labeler: accuracy on gold items (with a 95% interval) and implausibly fast answers."""
    return quality_out(store, store.get_campaign(campaign_id))


@router.get("/campaigns/{campaign_id}/review", response_model=ReviewOut, tags=["admin"])
def get_review(
    campaign_id: RowId,
    filters: ReviewFilters = Depends(review_filters),
    _: Principal = Depends(admin_only),
    store: FeedbackStore = Depends(get_store),
) -> ReviewOut:
    """The labels item by item, filtered (labeler, item id, disagreements, flagged, fast, wrong gold answers), 20 items a page."""
    return review_out(review_page(store, store.get_campaign(campaign_id), filters))


@router.get("/campaigns/{campaign_id}/members", response_model=list[LabelerOut], tags=["admin"])
def get_members(campaign_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[LabelerOut]:
    """The labelers allowed on the campaign (empty: every labeler)."""
    return [_labeler_out(lab) for lab in store.list_members(campaign_id)]


@router.post("/campaigns/{campaign_id}/members", response_model=list[LabelerOut], tags=["admin"])
def post_members(campaign_id: RowId, body: MembersIn, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[LabelerOut]:
    """Adds labelers (by name) to the members; once it has members, only they see the campaign."""
    return [_labeler_out(lab) for lab in store.add_members(campaign_id, body.labelers)]


@router.delete("/campaigns/{campaign_id}/members/{labeler_id}", response_model=list[LabelerOut], tags=["admin"])
def delete_member(campaign_id: RowId, labeler_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[LabelerOut]:
    """Takes a labeler off the members (their labels stay); no members left: open to every labeler."""
    labeler = next((lab for lab in store.list_members(campaign_id) if lab.id == labeler_id), None)
    if labeler is None:
        raise NotFound(f"labeler {labeler_id} is not a member of campaign {campaign_id}")
    return [_labeler_out(lab) for lab in store.remove_members(campaign_id, [labeler.name])]


# ---- admin: labelers ---------------------------------------------------------------------------


@router.post("/labelers", response_model=LabelerCreated, status_code=201, tags=["admin"])
def post_labeler(body: LabelerIn, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> LabelerCreated:
    """Adds a labeler; the sign-in token is in the answer and nowhere else."""
    created = store.add_labeler(body.name)
    return _labeler_created(created.labeler, created.token)


@router.get("/labelers", response_model=list[LabelerOut], tags=["admin"])
def get_labelers(_: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> list[LabelerOut]:
    """Every labeler."""
    return [_labeler_out(lab) for lab in store.list_labelers()]


@router.patch("/labelers/{labeler_id}", response_model=LabelerOut, tags=["admin"])
def patch_labeler(labeler_id: RowId, body: LabelerPatch, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> LabelerOut:
    """Enables or disables a labeler."""
    return _labeler_out(store.set_labeler_active(labeler_id, body.active))


@router.post("/labelers/{labeler_id}/token", response_model=LabelerCreated, tags=["admin"])
def post_labeler_token(labeler_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> LabelerCreated:
    """Gives a labeler a new token; the old one stops working."""
    token = store.rotate_token(labeler_id)
    labeler = next((lab for lab in store.list_labelers() if lab.id == labeler_id), None)
    if labeler is None:
        raise NotFound(f"labeler {labeler_id} not found")
    return _labeler_created(labeler, token)


@router.delete("/labelers/{labeler_id}/sessions", response_model=SessionsEnded, tags=["admin"])
def delete_labeler_sessions(labeler_id: RowId, _: Principal = Depends(admin_only), store: FeedbackStore = Depends(get_store)) -> SessionsEnded:
    """Signs a labeler out of every browser (their token still signs in)."""
    return SessionsEnded(ended=store.end_sessions(labeler_id))


# ---- labelers: the queue -----------------------------------------------------------------------


@router.get("/queue", response_model=list[MyCampaignOut], tags=["labeler"])
def get_queue(labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> list[MyCampaignOut]:
    """The active campaigns open to the labeler, with how many items they have left and have done."""
    out = []
    for campaign in store.list_campaigns(labeler_id=labeler.id):
        if campaign.status != "active":
            continue
        done = len(store.list_labels(campaign.id, labeler_id=labeler.id))
        remaining = store.count_available(campaign.id, labeler.id)
        out.append(MyCampaignOut.model_validate({**asdict(campaign), "remaining": remaining, "done": done}))
    return out


def _active_campaign(store: FeedbackStore, campaign_id: RowId, labeler: Labeler | None = None) -> Campaign:
    """The campaign if it is active (and, given a labeler, open to them); otherwise it is not found.

    The store's own labeler methods check membership in their transaction: pass `labeler` only
    where no such method follows (one query less on the hot path).
    """
    campaign = store.get_campaign(campaign_id, count_items=False)
    if campaign.status != "active" or (labeler is not None and not store.can_label(campaign_id, labeler.id)):
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


@router.get("/campaigns/{campaign_id}/next", response_model=TaskOut, responses={204: {"description": "nothing left"}}, tags=["labeler"])
def get_next(campaign_id: RowId, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> TaskOut | Response:
    """The labeler's current task (the same until answered or skipped); 204 when none is left."""
    task = current_task(store, _active_campaign(store, campaign_id), labeler)  # next_task checks membership
    return task if task is not None else Response(status_code=204)


@router.post("/assignments/{assignment_id}/label", response_model=LabelAck, tags=["labeler"])
def post_label(assignment_id: RowId, body: LabelIn, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> LabelAck:
    """Answers an assigned item (again: replaces the answer). Committed before the reply."""
    return submit_answer(store, labeler, assignment_id, body)


@router.post("/assignments/{assignment_id}/skip", status_code=204, tags=["labeler"])
def post_skip(assignment_id: RowId, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> Response:
    """Gives an item back; the labeler gets it again only by taking it back (`unskip`)."""
    store.skip(assignment_id, labeler.id)
    return Response(status_code=204)


@router.post("/assignments/{assignment_id}/unskip", response_model=TaskOut, tags=["labeler"])
def post_unskip(assignment_id: RowId, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> TaskOut:
    """Takes a skipped item back; it is the labeler's current task again (409 when others took every slot)."""
    task = store.unskip(assignment_id, labeler.id)
    campaign = store.get_campaign(task.item.campaign_id, count_items=False)
    return task_out(campaign, task, store.count_available(campaign.id, labeler.id))


@router.get("/campaigns/{campaign_id}/skipped", response_model=list[SkippedOut], tags=["labeler"])
def get_skipped(campaign_id: RowId, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> list[SkippedOut]:
    """The items the labeler skipped in a campaign, most recent first."""
    return [skipped_out(t) for t in store.list_skipped(_active_campaign(store, campaign_id, labeler).id, labeler.id)]


@router.get("/history", response_model=list[AnsweredOut], tags=["labeler"])
def get_history(labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> list[AnsweredOut]:
    """The labeler's own answers, most recently given first (the latest version of each)."""
    return [answered_out(store, a) for a in store.answered(labeler.id)]


@router.get("/history/{assignment_id}", response_model=AnsweredOut, tags=["labeler"])
def get_history_item(assignment_id: RowId, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> AnsweredOut:
    """One of the labeler's answers with its earlier versions; revise it with `POST /api/assignments/{id}/label`."""
    found = store.answered(labeler.id, assignment_id=assignment_id)
    if not found:
        raise NotFound(f"answered assignment {assignment_id} not found")
    return answered_out(store, found[0], with_versions=True)


@router.post("/campaigns/{campaign_id}/redteam", response_model=LabelAck, tags=["labeler"])
def post_redteam(campaign_id: RowId, body: LabelIn, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> LabelAck:
    """Stores a red-team finding written from scratch (prompt, response, harm, better_response)."""
    return submit_free(store, labeler, _active_campaign(store, campaign_id, labeler), body)


@router.post("/campaigns/{campaign_id}/generate", response_model=GenerateOut, tags=["labeler"])
def post_generate(campaign_id: RowId, body: GenerateIn, labeler: Labeler = Depends(labeler_only), store: FeedbackStore = Depends(get_store)) -> GenerateOut:
    """The campaign model's answer to a red-team prompt (400 when no model is available)."""
    campaign = _active_campaign(store, campaign_id, labeler)
    return GenerateOut(response=generate_response(store, campaign.model_path, body.prompt))
