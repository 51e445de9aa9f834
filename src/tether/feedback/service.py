"""What the JSON API and the pages both do: build campaigns, hand out tasks, store answers, report."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import Query

from tether.errors import TetherError
from tether.feedback.campaign_file import parse_item
from tether.feedback.quality import agreement_report, ordinary_labels, quality_report
from tether.feedback.review import PER_PAGE, Review, ReviewFilters, review
from tether.feedback.schemas import (
    AgreementOut,
    AnsweredOut,
    CampaignIn,
    CampaignOut,
    CompletionOut,
    ItemIn,
    LabelAck,
    LabelIn,
    LabelOut,
    ProgressOut,
    QualityOut,
    ReviewItemOut,
    ReviewLabelOut,
    ReviewOut,
    SkippedOut,
    TaskOut,
)
from tether.feedback.tasks import LabelError, check_label, expand_items
from tether.storage import Answered, Campaign, FeedbackStore, JobQueue, JobStatus, Label, LabelData, Labeler, NewItem, PairChoice, Task, TaskKind

GENERATE_WAIT_S = 120.0  # how long a red-team prompt waits for the worker's answer
WORKER_SEEN_S = 60.0  # a worker seen this recently is running (workers say so every 30 s at least)


class SamplingUnavailable(TetherError):
    """No sampling function is installed, or it failed."""


def campaign_out(campaign: Campaign) -> CampaignOut:
    """API view of a campaign (the record's fields of the same names)."""
    return CampaignOut.model_validate(campaign, from_attributes=True)


def items_from_api(kind: TaskKind, items: list[ItemIn]) -> list[NewItem]:
    """Checks API items against the task kind and splits them into units of work.

    Raises:
        LabelError: an item does not fit (names its index).
    """
    parsed = []
    for number, item in enumerate(items):
        try:
            parsed.append(parse_item(item.model_dump(exclude_none=True), kind))
        except ValueError as exc:
            raise LabelError(f"items[{number}]: {exc}") from None
    return expand_items(kind, parsed)


def create_campaign(store: FeedbackStore, body: CampaignIn) -> Campaign:
    """Creates a campaign from an API body.

    Raises:
        LabelError: an item does not fit the kind.
        Conflict: the name is taken.
    """
    items = items_from_api(body.kind, body.items)
    return store.create_campaign(items=items, **body.model_dump(exclude={"items"}))


def current_task(store: FeedbackStore, campaign: Campaign, labeler: Labeler) -> TaskOut | None:
    """The labeler's task in a campaign; for red-team campaigns, free writing once seeds run out.

    Returns:
        The task, or None when the labeler has nothing left (or the campaign is closed).
    """
    task = store.next_task(campaign.id, labeler.id)
    remaining = store.count_available(campaign.id, labeler.id)
    if task is not None:
        return task_out(campaign, task, remaining)
    if campaign.kind == TaskKind.REDTEAM and campaign.status == "active":
        return TaskOut(
            campaign_id=campaign.id, kind=campaign.kind, guidelines=campaign.guidelines, assignment_id=None, item_id=None, prompt="", completions=[], remaining=0
        )
    return None


def task_out(campaign: Campaign, task: Task, remaining: int) -> TaskOut:
    """API view of a task: the completions in the labeler's display order, each with its index."""
    completions = [CompletionOut(index=i, text=task.item.completions[i]) for i in task.display_order]
    return TaskOut(
        campaign_id=campaign.id,
        kind=campaign.kind,
        guidelines=campaign.guidelines,
        assignment_id=task.assignment_id,
        item_id=task.item.external_id,
        prompt=task.item.prompt,
        completions=completions,
        remaining=remaining,
    )


def skipped_out(task: Task) -> SkippedOut:
    """API view of a skipped item (the assignment to take back, the item's id and prompt)."""
    return SkippedOut(assignment_id=task.assignment_id, item_id=task.item.external_id, prompt=task.item.prompt)


def answered_out(store: FeedbackStore, answered: Answered, with_versions: bool = False) -> AnsweredOut:
    """API view of one of the labeler's answered items, optionally with the label's earlier versions."""
    versions = [{**asdict(v.data), "given_at": v.given_at, "replaced_at": v.replaced_at} for v in store.label_history(answered.label.id)] if with_versions else []
    return AnsweredOut.model_validate(
        {
            "assignment_id": answered.task.assignment_id,
            "campaign_id": answered.campaign_id,
            "campaign": answered.campaign_name,
            "kind": answered.campaign_kind,
            "item_id": answered.task.item.external_id,
            "prompt": answered.task.item.prompt,
            "label": label_out(answered.label),
            "n_versions": answered.n_versions,
            "revisable": answered.revisable,
            "versions": versions,
        }
    )


def answer_summary(kind: TaskKind, data: LabelData, display_order: list[int]) -> str:
    """One line saying what the answer was, by the positions the labeler saw (#1 is the top or left one)."""
    if kind == TaskKind.RANK and data.ranks is not None:
        parts = [f"#{pos + 1}: {data.ranks[index]}" + (" (unusable)" if data.unusable and data.unusable[index] else "") for pos, index in enumerate(display_order)]
        return "ranks " + ", ".join(parts)
    if kind == TaskKind.PAIR and data.choice is not None:
        if data.choice in (PairChoice.A, PairChoice.B):
            better = 0 if data.choice == PairChoice.A else 1
            return "left is better" if display_order and display_order[0] == better else "right is better"
        return "tie" if data.choice == PairChoice.TIE else "both bad"
    if kind == TaskKind.THUMBS and data.thumb is not None:
        return "thumbs up" if data.thumb == 1 else "thumbs down"
    if kind == TaskKind.REDTEAM and data.harm is not None:
        return f"harm {data.harm}" + (", with a better answer" if data.better_response else "")
    return ""


def label_data(body: LabelIn) -> LabelData:
    """The storage record of an API answer (not yet checked against the task); the fields match one to one."""
    return LabelData(**body.model_dump(exclude={"tie_intended"}))


def _ack(label: Label) -> LabelAck:
    return LabelAck(label_id=label.id, item_id=label.item_id, updated=label.updated_at != label.created_at)


def submit_answer(store: FeedbackStore, labeler: Labeler, assignment_id: int, body: LabelIn) -> LabelAck:
    """Checks and stores an answer to an assigned item; committed when this returns.

    Raises:
        NotFound: not the labeler's assignment. Conflict: skipped item or closed campaign.
        LabelError: the answer does not fit the task.
    """
    campaign, item = store.assignment_item(assignment_id, labeler.id)
    data = check_label(campaign.kind, len(item.completions), label_data(body), body.tie_intended)
    return _ack(store.submit_label(assignment_id, labeler.id, data))


def submit_free(store: FeedbackStore, labeler: Labeler, campaign: Campaign, body: LabelIn) -> LabelAck:
    """Stores a red-team finding written from scratch.

    Raises:
        LabelError: not a red-team campaign, or the answer is incomplete.
        Conflict: closed campaign.
    """
    if campaign.kind != TaskKind.REDTEAM:
        raise LabelError(f"campaign {campaign.name!r} is not a red-team campaign")
    data = check_label(campaign.kind, 0, label_data(body))
    return _ack(store.add_free_label(campaign.id, labeler.id, data))


def label_out(label: Label) -> LabelOut:
    """API view of a stored label: the label's fields and its answer's, flat, with the labeler's name."""
    return LabelOut.model_validate({**asdict(label), **asdict(label.data), "labeler": label.labeler_name})


def progress_out(store: FeedbackStore, campaign_id: int) -> ProgressOut:
    """API view of a campaign's progress (per-labeler rows under `labelers`, named by `labeler`)."""
    p = store.progress(campaign_id)
    labelers = [{**asdict(row), "labeler": row.labeler_name} for row in p.per_labeler]
    return ProgressOut.model_validate({**asdict(p), "labelers": labelers})


def agreement_out(store: FeedbackStore, campaign: Campaign) -> AgreementOut:
    """API view of a campaign's agreement report (the report's fields of the same names); labels
    on gold items are left out (they measure labelers against the known answer instead)."""
    labels = ordinary_labels(store.list_items(campaign.id), store.list_labels(campaign.id))
    report = agreement_report(campaign.kind, labels)
    return AgreementOut.model_validate(report, from_attributes=True)


def quality_out(store: FeedbackStore, campaign: Campaign) -> QualityOut:
    """API view of a campaign's screening: gold accuracy and fast answers per labeler."""
    report = quality_report(campaign, store.list_items(campaign.id), store.list_labels(campaign.id))
    return QualityOut.model_validate(report, from_attributes=True)


def review_page(store: FeedbackStore, campaign: Campaign, filters: ReviewFilters, per_page: int = PER_PAGE) -> Review:
    """One page of the review of a campaign's labels (see `tether.feedback.review`)."""
    return review(campaign, store.list_items(campaign.id), store.list_labels(campaign.id), filters, per_page)


def review_out(result: Review) -> ReviewOut:
    """API view of a review page."""
    items = []
    for entry in result.items:
        labels = [
            ReviewLabelOut.model_validate(
                {**label_out(row.label).model_dump(), "flagged": row.flagged, "fast": row.fast, "gold_correct": row.gold_correct, "match": row.match}
            )
            for row in entry.labels
        ]
        gold = {k: v for k, v in asdict(entry.item.gold).items() if v not in (None, "")} if entry.item.gold is not None else None
        items.append(
            ReviewItemOut(
                id=entry.item.id,
                item_id=entry.item.external_id,
                prompt=entry.item.prompt,
                completions=list(entry.item.completions),
                gold=gold,
                disagreement=entry.disagreement,
                agreement=entry.agreement,
                labels=labels,
            )
        )
    return ReviewOut(page=result.page, n_pages=result.n_pages, n_items=result.n_items, items=items)


def _sampler():  # type: ignore[no-untyped-def]
    try:
        from tether.rollout.sample import sample_completions  # heavy (torch): imported only when used
    except ImportError as exc:
        raise SamplingUnavailable(f"sampling from a model is not available here ({exc}); run `tether sample` and upload the file") from None
    return sample_completions


def sample_items(model_path: str, prompts: list[str], k: int) -> list[NewItem]:
    """Samples k completions per prompt with `tether.rollout.sample.sample_completions`.

    Raises:
        SamplingUnavailable: the sampling function is missing or failed.
    """
    sample = _sampler()
    try:
        outputs = sample(model_path, prompts, k)
    except Exception as exc:  # the hook loads a model: any failure is reported, not a server error
        raise SamplingUnavailable(f"sampling with {model_path!r} failed: {exc}") from None
    items = []
    for prompt, completions in zip(prompts, outputs):
        completions = [completions] if isinstance(completions, str) else [str(c) for c in completions]
        items.append(NewItem(prompt=prompt, completions=completions, model=model_path))
    return items


def generate_response(store: FeedbackStore, model_path: str | None, prompt: str, timeout_s: float | None = None) -> str:
    """The configured model's answer to a red-team prompt, written by a worker (`tether label worker`): the web
    process queues a `respond` job and waits for it.

    Raises:
        SamplingUnavailable: no model configured, no worker seen in the last WORKER_SEEN_S, the job failed,
            or no worker answered within `timeout_s` (default GENERATE_WAIT_S; the job is then cancelled).
    """
    if not model_path:
        raise SamplingUnavailable("this campaign has no model; paste the answer instead")
    timeout_s = GENERATE_WAIT_S if timeout_s is None else timeout_s
    queue = JobQueue(store)
    if not queue.worker_seen_within(WORKER_SEEN_S):
        raise SamplingUnavailable("no worker is running to answer: start `tether label worker` (or serve --with-worker), or paste the answer")
    job = queue.wait(queue.submit("respond", {"model_path": model_path, "prompt": prompt}, submitted_by="red-team").id, timeout_s)
    if job.status == JobStatus.DONE:
        return str(job.result["response"])
    if job.status == JobStatus.FAILED:
        raise SamplingUnavailable(f"the model could not answer: {job.error}")
    if queue.cancel(job.id, f"nobody waited: no worker took it within {timeout_s:g} s"):
        raise SamplingUnavailable(f"no worker answered within {timeout_s:g} s: start `tether label worker` (or serve --with-worker), or paste the answer")
    job = queue.wait(job.id, timeout_s)  # a worker took it just now
    if job.status == JobStatus.DONE:
        return str(job.result["response"])
    raise SamplingUnavailable(f"the model did not answer in time ({job.error or job.message}); paste the answer instead")


def review_filters(
    labeler: str = Query("", max_length=200),
    item: str = Query("", max_length=200),
    disagreements: bool = False,
    flagged: bool = False,
    fast: bool = False,
    wrong_gold: bool = False,
    page: int = Query(1, ge=1, le=1_000_000),
) -> ReviewFilters:
    """The review filters of a request's query (a FastAPI dependency of the review page and its API): labeler and item
    ids trimmed, empty meaning not filtered."""
    return ReviewFilters(labeler.strip() or None, item.strip() or None, disagreements, flagged, fast, wrong_gold, page)
