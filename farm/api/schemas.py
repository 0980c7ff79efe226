"""The API's shapes as pydantic models: path and query parameters, bodies and
answers. Routes declare them (farm/api/contract.py), requests are checked
against them, and /api/v1/openapi.json is generated from them."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from farm.models import INTEGER_MAX
from farm.safejson import UUID_PATTERN, CheckedModel

logger = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "assigned", "running", "succeeded", "failed", "canceled")

Uuid = Annotated[str, Field(pattern=UUID_PATTERN, examples=["0b7c5a9e-4a1f-4d1e-9a51-3f3c2a1b0c9d"])]
# Row ids are INTEGER columns.
RowId = Annotated[int, Field(ge=1, le=INTEGER_MAX)]
# In JSON bodies numbers must be numbers: no "5", no true.
BodyRowId = Annotated[int, Field(ge=1, le=INTEGER_MAX, strict=True)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
Timestamp = Annotated[str, Field(description="ISO 8601 with a time zone")]


class Params(CheckedModel):
    """Query parameters: ones this operation does not know are ignored, as HTTP clients expect."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# --------------------------------------------------------------------------- path parameters

class JobPath(CheckedModel):
    job_id: Uuid


class OutputPath(CheckedModel):
    output_id: Uuid


class CampaignPath(CheckedModel):
    campaign_id: Uuid


class WorkerPath(CheckedModel):
    worker_id: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/]+$")]


class WildcardPath(CheckedModel):
    # "folder/name" for a file in a subfolder of FARM_WILDCARDS_DIR.
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_/-]+$")]


class TokenPath(CheckedModel):
    token_id: RowId


class UserPath(CheckedModel):
    user_id: RowId


class TeamPath(CheckedModel):
    team_id: RowId


# --------------------------------------------------------------------------- query parameters

def _comma_list(choices: tuple[str, ...], what: str):
    """A comma-separated list of ``choices``: checked by a validator that names the
    wrong entry, documented as the equivalent pattern."""

    def check(value: str) -> str:
        for entry in value.split(","):
            if entry not in choices:
                raise ValueError(f"unknown {what} {entry!r}; use one or more of {', '.join(choices)}, separated by commas")
        return value

    pattern = rf"^({'|'.join(choices)})(,({'|'.join(choices)}))*$"
    return Annotated[str, AfterValidator(check), WithJsonSchema(
        {"type": "string", "pattern": pattern, "description": f"One {what} or several separated by commas"})]


StatusFilter = _comma_list(JOB_STATUSES, "status")
Cursor = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$",
                              description="next_cursor of the previous page")]
Limit = Annotated[int, Field(ge=1, le=200)]


class WaitQuery(Params):
    wait: float = Field(default=0, ge=0, le=30, description="Seconds to wait for the job to finish (long poll)")


class JobListQuery(Params):
    status: StatusFilter | None = None
    campaign: Uuid | None = None
    cursor: Cursor | None = None
    limit: Limit = 50


class CampaignJobsQuery(Params):
    status: StatusFilter | None = None
    cursor: Cursor | None = None
    limit: Limit = 50


class ManifestQuery(Params):
    format: Literal["csv", "jsonl"] = "jsonl"


class TokenListQuery(Params):
    user: RowId | None = Field(default=None, description="Whose tokens (admins only; default: yourself)")


class UsageQuery(Params):
    since: Annotated[str, Field(max_length=40, description="ISO date or time; a time without zone is UTC")] | None = None
    until: Annotated[str, Field(max_length=40, description="ISO date or time; a time without zone is UTC")] | None = None
    group_by: _comma_list(("user", "team", "model", "day"), "grouping") = "user"  # type: ignore[valid-type]
    format: Literal["json", "csv"] = "json"


# --------------------------------------------------------------------------- bodies

class UserCreate(CheckedModel):
    name: Name
    team: Name | None = None
    role: Literal["admin", "member"] = "member"
    password: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


Int32 = Annotated[int, Field(ge=0, le=INTEGER_MAX, strict=True)]


class QuotaLimits(CheckedModel):
    """A user's or team's limits; null or absent = unlimited."""

    images_per_day: Int32 | None = None
    gpu_seconds_per_month: Annotated[float, Field(ge=0, strict=True)] | None = None
    max_concurrent_jobs: Int32 | None = None
    max_queued_jobs: Int32 | None = Field(default=None, description="Jobs waiting to start (queued or assigned)")
    max_pixels: Int32 | None = None
    max_steps: Int32 | None = None


class TokenCreate(CheckedModel):
    name: Name = "default"
    scope: Literal["full", "read"] = "full"
    user: BodyRowId | None = Field(default=None, description="user id (admins only; default: yourself)")


# --------------------------------------------------------------------------- answers

class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class Error(BaseModel):
    error: ErrorDetail


class WebhookCreated(BaseModel):
    """A webhook as submitted; the only answer that shows its secret."""

    url: str
    secret: str = Field(description="the whsec_ secret deliveries are signed with: the one given, or the one farm "
                                    "generated; verify with any Standard Webhooks library (never shown again)")


class JobAccepted(BaseModel):
    id: str
    status: str
    polling_url: str
    webhook: WebhookCreated | None = Field(default=None, description="present when the job asked for a webhook")


class RerenderAccepted(JobAccepted):
    rerender_of: str


class Progress(BaseModel):
    step: int
    total: int
    percent: float
    eta_s: float | None


class OutputLink(BaseModel):
    id: str
    index: int
    url: str
    lineage_url: str


class JobWebhook(BaseModel):
    """Where a job's own webhook stands (the secret is never shown)."""

    url: str
    state: Literal["waiting", "pending", "delivered", "failed"] = Field(description="waiting until the job ends")
    event: str | None = Field(description="job.succeeded, job.failed or job.canceled once the job ended")
    attempts: int
    last_error: str | None
    next_at: Timestamp | None = Field(description="the next try, while pending")


class JobQueue(BaseModel):
    """Where a queued job stands, from the scheduler's last pass (farm/scheduler/forecast.py)."""

    position: int | None = Field(description="its place, from 1, among the queued jobs that compete for the same "
                                             "workers; null when the last pass did not see it (beyond the 5,000 "
                                             "jobs a pass reads, or submitted since)")
    predicted_start: Timestamp | None = Field(description="when it is predicted to start rendering; null as above, or "
                                                          "when no online worker can run it")
    computed_at: Timestamp | None = Field(description="when the scheduler computed this")


class JobPreemption(BaseModel):
    """Preemption at step boundaries (a render of a lower priority class stopped for an interactive job)."""

    count: int = Field(description="how many times its render was stopped and checkpointed")
    stopping: bool = Field(description="running, and asked to stop at its next step (it is checkpointed, then queued)")
    resumes: bool = Field(description="queued with a checkpoint: its next attempt continues from the stopped step "
                                      "and makes the same bytes as an uninterrupted render")


class JobView(BaseModel):
    id: str
    status: Literal[JOB_STATUSES]  # type: ignore[valid-type]
    polling_url: str
    progress: Progress
    outputs: list[OutputLink]
    error: str | None
    campaign: str | None
    model: str
    params: dict[str, Any]
    priority: int
    created_at: Timestamp
    assigned_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    worker: str | None
    attempt: int
    rerender_of: str | None
    rerender_matches: bool | None
    webhook: JobWebhook | None = Field(default=None, description="the job's own webhook (campaign jobs are announced by their campaign's)")
    deadline: Timestamp | None = Field(default=None, description="when the job is due (its own deadline; a campaign's jobs are due at the campaign's)")
    at_risk: bool = Field(default=False, description="queued and predicted to end after its deadline")
    deadline_missed: bool = Field(default=False, description="it ended after its own deadline")
    deadline_missed_s: float | None = Field(default=None, description="by how many seconds, when it did")
    queue: JobQueue | None = Field(default=None, description="while queued: where it stands, from the scheduler's last "
                                                             "pass; null in lists and once it left the queue")
    preemption: JobPreemption


class JobPage(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class OutputRecord(OutputLink):
    """The lineage record: the link fields and everything that made the image."""

    model_config = ConfigDict(extra="allow")


class DescribeRequest(BaseModel):
    """One image to describe: an upload id or an output id the caller can see."""

    model_config = ConfigDict(extra="forbid")

    upload: str | None = Field(default=None, description="an upload id (POST /api/v1/uploads)")
    output: str | None = Field(default=None, description="an output id")


class DescribeView(BaseModel):
    prompt: str = Field(description="the description, to use as a prompt")
    model: str = Field(description="the image-to-text model that wrote it (its folder's name)")
    worker: str = Field(description="the worker that ran it")


class UploadView(BaseModel):
    id: str
    width: int
    height: int
    byte_size: int


class WorkerView(BaseModel):
    id: str
    host: str
    state: Literal["online", "draining", "stopping", "unhealthy", "offline"]
    draining: bool
    health_error: str | None
    device: str
    device_name: str | None
    vram_total_gb: float
    vram_free_gb: float
    loaded_models: list[dict[str, Any]]
    host_models: list[dict[str, Any]] = Field(description="Models evicted from the GPU and kept in host memory (the host tier): [{id, gb}].")
    ram_cache_gb: float = Field(description="Size of the worker's host tier in GB (0: off).")
    h2d_gbps: float = Field(description="Host-to-GPU copy rate, GB/s, that prices a load from the host tier.")
    serves_models: list[str] | None
    families: list[str] | None
    max_pixels: int | None
    heartbeat_age_s: float
    started_at: Timestamp | None
    software: dict[str, Any] | None


class WorkerList(BaseModel):
    workers: list[WorkerView]


class WorkerState(BaseModel):
    id: str
    state: str


class LoraView(BaseModel):
    id: str
    family: str
    weights_sha256: str | None
    description: str | None


class LoraList(BaseModel):
    loras: list[LoraView]


class ModelVariant(BaseModel):
    id: str
    variant: str | None
    default_steps: int
    vram_gb: float
    quantization: str | None = None  # its quantization format (int8, nf4, gguf-q4_0, ...); null: full weights


class ModelView(BaseModel):
    id: str
    family: str
    source: str | None
    revision: str | None
    dtype: str | None
    vram_gb: float
    default_steps: int
    default_guidance: float
    description: str | None
    base: str | None
    variant: str | None
    variants: list[ModelVariant]
    # A quantized variant's format, library, quantized components, whether the worker quantizes
    # it while loading (at_load) and the quantization config; null for full weights.
    quantization: dict[str, Any] | None = None
    weights_sha256: str | None
    held_by: list[str]


class ModelList(BaseModel):
    models: list[ModelView]


class StyleList(BaseModel):
    styles: list[dict[str, Any]]
    categories: list[str]


class PresetList(BaseModel):
    presets: list[dict[str, Any]]


class WildcardSummary(BaseModel):
    name: str = Field(description="Written __name__ in a prompt or negative prompt")
    lines: int = Field(description="How many options it picks from")
    source: str = Field(description="'builtin', or the user file (FARM_WILDCARDS_DIR) that defines it")


class WildcardList(BaseModel):
    wildcards: list[WildcardSummary]


class WildcardView(BaseModel):
    name: str
    source: str
    lines: list[str] = Field(description="The options, one of which each image's seed picks")


class UserCreated(BaseModel):
    id: int
    name: str
    role: str
    token: str = Field(description="The user's first API token; shown once")


class QuotaView(BaseModel):
    images_per_day: int | None = None
    gpu_seconds_per_month: float | None = None
    max_concurrent_jobs: int | None = None
    max_queued_jobs: int | None = None
    max_pixels: int | None = None
    max_steps: int | None = None


class MeUser(BaseModel):
    id: int
    name: str
    role: str
    team: str | None


class MeQuotas(BaseModel):
    user: QuotaView | None
    team: QuotaView | None


class MeView(BaseModel):
    user: MeUser
    quota: MeQuotas
    usage: dict[str, Any]
    remaining: dict[str, float]


class UsageReport(BaseModel):
    since: Timestamp
    until: Timestamp
    group_by: list[str]
    rows: list[dict[str, Any]]


class Cost(BaseModel):
    jobs: int
    images: int
    gpu_seconds: float


class CampaignSubmitted(BaseModel):
    id: str | None = Field(default=None, description="absent for a dry run")
    jobs: int
    cost: Cost
    webhook: WebhookCreated | None = Field(default=None, description="present when the campaign asked for a webhook (not on a dry run)")


class WebhookCompletion(BaseModel):
    state: Literal["waiting", "pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    next_at: Timestamp | None


class WebhookJobDelivery(BaseModel):
    job: str
    event: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    at: Timestamp | None


class WebhookStatus(BaseModel):
    """Where the campaign's webhook deliveries stand (the secret is never shown)."""

    url: str
    per_job: bool
    completion: WebhookCompletion
    last_job_delivery: WebhookJobDelivery | None


class CampaignView(BaseModel):
    id: str
    name: str
    status: str
    priority: int
    jobs: int
    images: int
    counts: dict[str, int]
    percent: float
    images_per_minute: float = Field(description="images made / the campaign's own running time (first job's start "
                                                 "to last job's finish, or to now while jobs remain)")
    eta_s: float | None = Field(description="seconds to go: remaining estimated work / recent throughput; null while "
                                            "there is nothing to go on (no job finished and no worker ETA yet, paused, "
                                            "or nothing finished lately); 0 when no job remains")
    budget_images: int | None
    deadline: Timestamp | None
    at_risk: bool = Field(description="the scheduler's prediction of the campaign's finish passes its deadline "
                                      "(campaign.at_risk is sent to its webhook when this turns true)")
    predicted_finish_at: Timestamp | None = Field(description="the scheduler's prediction of the last image's end, "
                                                              "campaigns with a deadline only")
    deadline_missed: bool = Field(description="it finished after its deadline")
    deadline_missed_s: float | None = Field(description="by how many seconds, when it did")
    created_at: Timestamp
    finished_at: Timestamp | None
    webhook: WebhookStatus | None


class CampaignCanceled(CampaignView):
    canceled_jobs: int


class CampaignRetried(CampaignView):
    retried_jobs: int


class TokenView(BaseModel):
    id: int
    name: str
    prefix: str
    scope: Literal["full", "read"]
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class TokenList(BaseModel):
    tokens: list[TokenView]


class TokenCreated(BaseModel):
    id: int
    name: str
    prefix: str
    scope: Literal["full", "read"]
    token: str = Field(description="The token itself; shown only this once")


class Document(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- event stream data
# The ``data`` of each Server-Sent Event of /jobs/{id}/events and
# /campaigns/{id}/events, as farm/services/live.py writes it (the feeds build
# plain dicts); farm.client parses the streams with these, and
# tests/integration/test_client.py checks a job stream's events carry exactly
# these fields.

class JobStatusEvent(BaseModel):
    status: Literal[JOB_STATUSES]  # type: ignore[valid-type]
    attempt: int
    worker: str | None
    error: str | None


class CampaignStatusEvent(BaseModel):
    status: str


class CampaignJobEvent(BaseModel):
    """On a campaign's stream: one of its jobs placed on a worker, started, or gone from its worker."""

    job: str
    status: Literal[JOB_STATUSES]  # type: ignore[valid-type]
    worker: str | None
    attempt: int


class JobProgressEvent(BaseModel):
    step: int | None
    total: int | None
    eta_s: float | None
    job: str | None = Field(default=None, description="On a campaign's stream: the job the numbers are of")


class CampaignProgressEvent(BaseModel):
    jobs: int
    images: int
    counts: dict[str, int]
    percent: float
    images_per_minute: float
    eta_s: float | None


class PreviewEvent(BaseModel):
    step: int | None
    total: int | None
    eta_s: float | None
    mime: str
    data: str = Field(description="The preview image, base64")


class OutputEvent(BaseModel):
    id: str
    job: str
    index: int
    width: int
    height: int
    url: str
    lineage_url: str


class EndEvent(BaseModel):
    reason: Literal["final", "timeout", "gone"]
    status: str | None = None
