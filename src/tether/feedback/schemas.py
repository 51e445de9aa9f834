"""Request and response bodies of the JSON API (pydantic; sizes bounded).

Numbers and booleans in requests are strict: `"1"`, `true` or `1.5` is not a rank, and `"yes"` is
not a boolean. A body that does not fit is answered 422 with the field named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from tether.storage import PairChoice, TaskKind

MAX_TEXT = 100_000
MAX_NOTE = 10_000
Name = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
MAX_ROW_ID = 2**63 - 1  # SQL integer keys are signed 64-bit
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="a row id")]


class ItemIn(BaseModel):
    """One item of a campaign file."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field("", max_length=MAX_TEXT)
    completions: list[str] = Field(default_factory=list, max_length=64)
    id: StrictStr | StrictInt | None = None
    model: str | None = Field(None, max_length=1000)
    meta: dict[str, object] | None = None
    gold: dict[str, object] | bool | None = Field(
        None, description='a gold item\'s known answer: {"ranking": [...]}, {"best": i}, {"choice": ...} or {"thumb": 1|0}'
    )


class CampaignIn(BaseModel):
    """A new campaign with its items."""

    model_config = ConfigDict(extra="forbid")
    name: str = Name
    kind: TaskKind
    guidelines: str = Field("", max_length=MAX_TEXT)
    labelers_per_item: StrictInt = Field(1, ge=1, le=100)
    model_path: str | None = Field(None, max_length=1000, description="model answering red-team prompts")
    gold_rate: float = Field(0.1, ge=0, le=1, description="chance that a labeler's next task is a gold item")
    fast_ms: int | None = Field(None, ge=1, le=86_400_000, description="answers faster than this are flagged; default: from text length")
    members: list[str] = Field(default_factory=list, max_length=10_000, description="labelers allowed on it (none: every labeler)")
    items: list[ItemIn] = Field(default_factory=list, max_length=200_000)


class ItemsIn(BaseModel):
    """Items appended to a campaign."""

    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(max_length=200_000)


class CampaignPatch(BaseModel):
    """Changes to a campaign; absent fields are left as they are."""

    model_config = ConfigDict(extra="forbid")
    guidelines: str | None = Field(None, max_length=MAX_TEXT)
    status: Literal["active", "closed"] | None = None
    model_path: str | None = Field(None, max_length=1000)
    gold_rate: float | None = Field(None, ge=0, le=1)
    fast_ms: int | None = Field(None, ge=0, le=86_400_000, description="0: derive the threshold from the text length again")


class CampaignOut(BaseModel):
    """A campaign."""

    id: int
    name: str
    kind: TaskKind
    guidelines: str
    labelers_per_item: int
    status: str
    model_path: str | None
    n_items: int
    created_at: datetime
    gold_rate: float
    fast_ms: int | None


class LabelerIn(BaseModel):
    """A new labeler."""

    model_config = ConfigDict(extra="forbid")
    name: str = Name


class LabelerOut(BaseModel):
    """A labeler (never with the token)."""

    id: int
    name: str
    active: bool
    created_at: datetime


class LabelerCreated(LabelerOut):
    """A labeler just created or given a new token: the token is shown this once."""

    token: str


class LabelerPatch(BaseModel):
    """Enable or disable a labeler."""

    model_config = ConfigDict(extra="forbid")
    active: StrictBool


class CompletionOut(BaseModel):
    """A completion as shown: `index` is its position in the item, the key used when answering."""

    index: int
    text: str


class TaskOut(BaseModel):
    """The labeler's current task. assignment_id is None for a red-team campaign's free writing."""

    campaign_id: int
    kind: TaskKind
    guidelines: str
    assignment_id: int | None
    item_id: str | None
    prompt: str
    completions: list[CompletionOut]
    remaining: int


class LabelIn(BaseModel):
    """An answer; which fields are required depends on the task kind.

    rank: ranks (ranks[i] for completion index i; 1 = best, equal = tie), unusable, tie_intended
    (required true when two ranks are equal: a tie is confirmed, never assumed). pair: choice
    (A is the completion with index 0). thumbs: thumb (1 up, 0 down). redteam: prompt, response,
    harm (0 harmless .. 4 severely harmful), better_response.
    """

    model_config = ConfigDict(extra="forbid")
    ranks: list[StrictInt] | None = Field(None, max_length=64)
    unusable: list[StrictBool] | None = Field(None, max_length=64)
    choice: PairChoice | None = None
    thumb: StrictInt | None = Field(None, ge=0, le=1)
    harm: StrictInt | None = Field(None, ge=0, le=4)
    prompt: str | None = Field(None, max_length=MAX_TEXT)
    response: str | None = Field(None, max_length=MAX_TEXT)
    better_response: str | None = Field(None, max_length=MAX_TEXT)
    note: str = Field("", max_length=MAX_NOTE)
    duration_ms: StrictInt | None = Field(None, ge=0, le=86_400_000)
    tie_intended: StrictBool = Field(False, description="rank: equal ranks are meant (these completions are equally good)")


class SessionsEnded(BaseModel):
    """How many browser sessions of a labeler were ended."""

    ended: int


class LabelAck(BaseModel):
    """A stored answer: the label is committed when this is returned."""

    label_id: int
    item_id: int
    updated: bool


class LabelOut(BaseModel):
    """A stored label (admin only)."""

    id: int
    item_id: int
    labeler: str
    ranks: list[int] | None
    unusable: list[bool] | None
    choice: PairChoice | None
    thumb: int | None
    harm: int | None
    prompt: str | None
    response: str | None
    better_response: str | None
    note: str
    duration_ms: int | None
    created_at: datetime
    updated_at: datetime


class LabelerProgressOut(BaseModel):
    """One labeler's counts in a campaign."""

    labeler: str
    n_labels: int
    n_open: int
    n_skipped: int


class ProgressOut(BaseModel):
    """Campaign progress."""

    n_items: int
    n_target: int
    n_labels: int
    n_items_complete: int
    labelers: list[LabelerProgressOut]


class LabelerQualityOut(BaseModel):
    """One labeler's agreement numbers."""

    name: str
    n_labels: int
    pairwise: float | None
    consensus: float | None
    n_compared: int
    alpha_without: float | None
    outlier: bool


class AgreementOut(BaseModel):
    """A campaign's agreement report."""

    n_items_multi: int
    n_pairs: int
    pairwise: float | None
    alpha: float | None
    alpha_level: str
    labelers: list[LabelerQualityOut]
    outliers: list[str]


class MeOut(BaseModel):
    """Who the token belongs to."""

    role: Literal["admin", "labeler"]
    name: str


class MyCampaignOut(BaseModel):
    """A campaign as a labeler sees it in the queue."""

    id: int
    name: str
    kind: TaskKind
    remaining: int
    done: int


class SkippedOut(BaseModel):
    """An item the labeler skipped: `POST /api/assignments/{assignment_id}/unskip` takes it back."""

    assignment_id: int
    item_id: str
    prompt: str


class LabelVersionOut(BaseModel):
    """An earlier version of a revised label."""

    ranks: list[int] | None
    unusable: list[bool] | None
    choice: PairChoice | None
    thumb: int | None
    harm: int | None
    prompt: str | None
    response: str | None
    better_response: str | None
    note: str
    duration_ms: int | None
    given_at: datetime
    replaced_at: datetime


class AnsweredOut(BaseModel):
    """One of the labeler's answered items: revise it by answering the assignment again."""

    assignment_id: int
    campaign_id: int
    campaign: str
    kind: TaskKind
    item_id: str
    prompt: str
    label: LabelOut
    n_versions: int = Field(description="earlier versions kept in the label history")
    revisable: bool = Field(description="the campaign is active, so the answer can still be revised")
    versions: list[LabelVersionOut] = Field(default_factory=list, description="earlier versions, oldest first (one item only)")


class GenerateIn(BaseModel):
    """A red-team prompt for the campaign's model."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)


class GenerateOut(BaseModel):
    """The model's answer."""

    response: str


class MembersIn(BaseModel):
    """Labelers to add to a campaign's members, by name."""

    model_config = ConfigDict(extra="forbid")
    labelers: list[str] = Field(min_length=1, max_length=10_000)


class LabelerScreeningOut(BaseModel):
    """One labeler's gold accuracy (with its 95% Wilson interval) and fast answers."""

    name: str
    n_gold: int
    n_correct: int
    accuracy: float | None
    low: float | None
    high: float | None
    n_timed: int
    n_fast: int
    median_ms: float | None
    fails_gold: bool
    fast: bool


class QualityOut(BaseModel):
    """A campaign's screening report."""

    n_gold_items: int
    gold_rate: float
    fast_ms: int | None
    labelers: list[LabelerScreeningOut]


class ReviewLabelOut(LabelOut):
    """A label in the review, with its flags and whether it passed the filters."""

    flagged: bool
    fast: bool
    gold_correct: bool | None
    match: bool


class ReviewItemOut(BaseModel):
    """An item in the review with all its labels."""

    id: int
    item_id: str
    prompt: str
    completions: list[str]
    gold: dict[str, object] | None
    disagreement: bool
    agreement: float | None
    labels: list[ReviewLabelOut]


class ReviewOut(BaseModel):
    """One page of the review of a campaign's labels."""

    page: int
    n_pages: int
    n_items: int
    items: list[ReviewItemOut]


class JobOut(BaseModel):
    """A job of the worker queue: what it is, how far it got, its result or error (times in UTC)."""

    id: int
    kind: str
    title: str = Field(description="what the job does, in a few words")
    status: Literal["queued", "running", "done", "failed"]
    progress: float = Field(description="0 to 1")
    message: str = Field(description="what the job is doing now")
    error: str | None
    result: object | None = Field(description="the job's result; for playground jobs the answers so far, while it runs")
    claimed_by: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PlaygroundIn(BaseModel):
    """A prompt for every playground model."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    mine: bool = Field(False, description="answer with the shared policy and the signed-in labeller's own adapter (/my-model)")


class ThumbIn(BaseModel):
    """A thumb on one answer of a finished playground job (the answer is taken from the job, not the request)."""

    model_config = ConfigDict(extra="forbid")
    job_id: int = Field(ge=1, le=MAX_ROW_ID)
    model: str = Field(min_length=1, max_length=200, description="the name of the model that wrote the answer")
    thumb: Literal[0, 1] = Field(description="1 up, 0 down")


class ThumbAck(BaseModel):
    """A stored thumb: committed when this is returned."""

    campaign_id: int
    campaign: str
    item_id: int
    label_id: int
    updated: bool
