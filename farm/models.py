"""SQLAlchemy 2 models: the source of truth for users, jobs, outputs, workers.

Columns are non-null unless marked ``Optional``; every table has
``created_at`` and ``updated_at``. Job state changes go through
:mod:`farm.states`, never by assigning ``Job.status`` here.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import uuid
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy import false as sa_false
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# The largest value an Integer column holds (PostgreSQL's integer is 32-bit):
# a larger number given for one must be refused before it reaches the database.
INTEGER_MAX = 2**31 - 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSONType, list[Any]: JSONType}


class Timestamped:
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Role(str, enum.Enum):
    admin = "admin"
    member = "member"


class JobStatus(str, enum.Enum):
    queued = "queued"
    assigned = "assigned"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


class Team(Timestamped, Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Fair-share weight of the team as a whole (its members share it).
    share_weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")


class User(Timestamped, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=Role.member.value)
    team_id: Mapped[Optional[int]] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    password_hash: Mapped[Optional[str]] = mapped_column(String(255))
    # Fair-share weight: a user with weight 2 gets twice the GPU time of one with 1 when both wait.
    share_weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    disabled_at: Mapped[Optional[dt.datetime]]
    # The model this user's AUTOMATIC1111 clients render with when a request
    # names none (POST /sdapi/v1/options sd_model_checkpoint); farm's own API
    # keeps FARM_DEFAULT_MODEL (farm/api/adapters/a1111.py says why). No foreign
    # key: a model removed later is passed over, and SQLite would rebuild users.
    default_model: Mapped[Optional[str]] = mapped_column(String(128))

    team: Mapped[Optional[Team]] = relationship(lazy="joined")

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin.value


class ApiToken(Timestamped, Base):
    """An API token; only its sha256 is stored, with a short prefix for listing."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64), default="default")
    scope: Mapped[str] = mapped_column(String(16), default="full")
    last_used_at: Mapped[Optional[dt.datetime]]
    revoked_at: Mapped[Optional[dt.datetime]]

    user: Mapped[User] = relationship(lazy="joined")


class DashboardSession(Timestamped, Base):
    """A dashboard sign-in; the cookie carries its secret, only the secret's sha256 is stored.

    Every dashboard request reads it: an ended or expired row, a disabled
    user or a revoked token signs the browser out (farm/services/sessions.py).
    """

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The API token signed in with (its scope is the session's); null after a password sign-in.
    token_id: Mapped[Optional[int]] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="full")
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[Optional[dt.datetime]]
    end_reason: Mapped[Optional[str]] = mapped_column(String(64))
    client_address: Mapped[Optional[str]] = mapped_column(String(64))
    user_agent: Mapped[Optional[str]] = mapped_column(String(255))

    user: Mapped[User] = relationship(lazy="joined")
    token: Mapped[Optional[ApiToken]] = relationship(lazy="joined")


class ModelEntry(Timestamped, Base):
    """The model registry: id -> local directory or hub repo id."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    family: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[Optional[str]] = mapped_column(String(8))
    revision: Mapped[Optional[str]] = mapped_column(String(64))
    vram_gb: Mapped[float] = mapped_column(Float)
    default_steps: Mapped[int] = mapped_column(Integer, default=20)
    default_guidance: Mapped[float] = mapped_column(Float, default=7.0)
    weights_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    files: Mapped[Optional[dict[str, Any]]]
    description: Mapped[str] = mapped_column(Text, default="")
    # Variants: entries that share a base name ("flux") and differ by variant
    # ("schnell", "dev"); a request names the entry's id, or base + variant.
    base: Mapped[Optional[str]] = mapped_column(String(128), index=True)
    variant: Mapped[Optional[str]] = mapped_column(String(64))
    # How a quantized variant's weights are quantized (farm/quantization.py:
    # format, library, components, at_load, config); null for 16-bit/fp32 weights.
    quantization: Mapped[Optional[dict[str, Any]]]

    __table_args__ = (UniqueConstraint("base", "variant"),)


class LoraEntry(Timestamped, Base):
    """A LoRA adapter a request can apply to models of its family, with a weight."""

    __tablename__ = "loras"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))  # a local folder holding one LoRA weights file
    family: Mapped[str] = mapped_column(String(16))
    weights_file: Mapped[str] = mapped_column(String(255))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")


class Worker(Timestamped, Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(16))
    device_name: Mapped[str] = mapped_column(String(255))
    vram_total_gb: Mapped[float] = mapped_column(Float)
    vram_free_gb: Mapped[float] = mapped_column(Float)
    # [{"id": model id, "vram_gb": float}], what the worker holds in memory now.
    loaded_models: Mapped[list[Any]] = mapped_column(default=list)
    # Model ids the worker may serve; null means any registered model.
    serves_models: Mapped[Optional[list[Any]]]
    families: Mapped[list[Any]] = mapped_column(default=list)
    # The image-to-text model it describes images with (its folder's name); null: it offers no describe.
    describe_model: Mapped[Optional[str]] = mapped_column(String(255))
    max_pixels: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer, default=1)
    speed: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    load_gbps: Mapped[float] = mapped_column(Float, default=2.0, server_default="2.0")
    # The host-memory tier: [{"id": model id, "gb": float}] evicted from the
    # GPU and kept in RAM (least recently evicted first), its size in GB and
    # the host-to-GPU rate that prices a load from it (GB/s).
    host_models: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    ram_cache_gb: Mapped[float] = mapped_column(Float, default=0.0, server_default="0.0")
    h2d_gbps: Mapped[float] = mapped_column(Float, default=12.0, server_default="12.0")
    # online | stopping (SIGTERM: finishing, takes no work) | unhealthy (its
    # object store refuses it for good; see health_error) | offline
    state: Mapped[str] = mapped_column(String(16), default="online")
    # The process now registered under this name: a restart under the same
    # name gets a new one, so it adopts none of its predecessor's jobs.
    instance_id: Mapped[Optional[str]] = mapped_column(String(32))
    health_error: Mapped[Optional[str]] = mapped_column(Text)
    # An operator's drain: finish current work, take no more. Kept apart from
    # state so a worker lost and back keeps it.
    draining: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    software: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CampaignStatus(str, enum.Enum):
    active = "active"
    paused = "paused"
    canceled = "canceled"
    completed = "completed"


class Campaign(Timestamped, Base):
    """Many jobs submitted as one: a base request times a matrix and/or rows."""

    __tablename__ = "campaigns"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[Optional[int]] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.active.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    base: Mapped[dict[str, Any]]
    matrix: Mapped[Optional[dict[str, Any]]]
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    job_count: Mapped[int] = mapped_column(Integer)
    image_count: Mapped[int] = mapped_column(Integer)
    budget_images: Mapped[Optional[int]] = mapped_column(Integer)
    deadline: Mapped[Optional[dt.datetime]]
    webhook_url: Mapped[Optional[str]] = mapped_column(String(2048))
    webhook_secret: Mapped[Optional[str]] = mapped_column(String(128))
    webhook_per_job: Mapped[bool] = mapped_column(default=False)
    # Delivery of the completion webhook: pending -> delivered | failed.
    webhook_state: Mapped[Optional[str]] = mapped_column(String(16))
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[Optional[dt.datetime]]
    webhook_last_error: Mapped[Optional[str]] = mapped_column(Text)
    finished_at: Mapped[Optional[dt.datetime]]
    # With a deadline: the scheduler's prediction of the last image's end and
    # whether it passes the deadline (campaign.at_risk is sent when that turns
    # true); set at the end when it ended late: seconds past the deadline.
    at_risk: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    predicted_finish_at: Mapped[Optional[dt.datetime]]
    deadline_missed_s: Mapped[Optional[float]] = mapped_column(Float)

    def complete(self, now: dt.datetime) -> None:
        """Every job is final: the campaign is completed, and a deadline it passed is recorded as missed."""
        self.status, self.finished_at, self.at_risk = CampaignStatus.completed.value, now, False
        if self.deadline is not None and now > self.deadline:
            self.deadline_missed_s = (now - self.deadline).total_seconds()

    def forget_prediction(self) -> None:
        """Paused or canceled: nothing renders, so no finish is predicted and it is not at risk (a
        resumed campaign's next forecast predicts again, and a turn to at risk is told again)."""
        self.predicted_finish_at, self.at_risk = None, False


class QueueForecast(Base):
    """The scheduler's last pass, summed per model: for each queued job of the
    model (in queue order), its position among the jobs that compete for the
    same workers and its predicted start, seconds after ``computed_at``.
    GET /jobs/{id} reads one row (farm/scheduler/forecast.py)."""

    __tablename__ = "queue_forecasts"

    model_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    computed_at: Mapped[dt.datetime]
    job_ids: Mapped[list[Any]]
    positions: Mapped[list[Any]]
    starts_s: Mapped[list[Any]]


class CampaignTally(Base):
    """A campaign's jobs in one status, summed; farm.tallies keeps it in the
    same transaction as every status change, so progress reads a few rows."""

    __tablename__ = "campaign_tallies"

    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    work: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # estimated GPU seconds
    # The first and the latest time a job entered this status (the campaign's
    # first start is the running row's first_at; its last finish the worked rows' last_at).
    first_at: Mapped[Optional[dt.datetime]]
    last_at: Mapped[Optional[dt.datetime]]


class CampaignThroughput(Base):
    """Work a campaign's jobs finished (succeeded or failed) within one
    10-second bucket: recent throughput without reading finished jobs."""

    __tablename__ = "campaign_throughput"

    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[dt.datetime] = mapped_column(primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    work: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class WebhookDelivery(Timestamped, Base):
    """One job's end announced to a webhook: a job of a campaign that asked for
    per-job events (campaign_id set; the campaign's URL and secret), or a job
    submitted with its own webhook (campaign_id None; the job's URL and secret).
    A job's own webhook gets its row, ``waiting`` and without an event, when the
    job is submitted, so finding the ones to send reads this table's index, not
    the jobs."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("job_id", "event"), Index("ix_webhook_deliveries_state_next", "state", "next_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[Optional[uuid.UUID]] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event: Mapped[Optional[str]] = mapped_column(String(32))  # job.<final status>; None while waiting
    state: Mapped[str] = mapped_column(String(16), default="pending")  # waiting | pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[Optional[str]] = mapped_column(Text)


class Quota(Timestamped, Base):
    """Limits of one user or one team; a null limit is unlimited."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("user_id"), UniqueConstraint("team_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[Optional[int]] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    images_per_day: Mapped[Optional[int]] = mapped_column(Integer)
    gpu_seconds_per_month: Mapped[Optional[float]] = mapped_column(Float)
    max_concurrent_jobs: Mapped[Optional[int]] = mapped_column(Integer)
    max_pixels: Mapped[Optional[int]] = mapped_column(Integer)
    max_steps: Mapped[Optional[int]] = mapped_column(Integer)
    # Jobs queued or assigned (not yet started) at once; checked at submission.
    max_queued_jobs: Mapped[Optional[int]] = mapped_column(Integer)


class UsageEntry(Base):
    """The usage ledger: every reservation, settlement and refund.

    Usage in a period is the sum of the entries in it: a submission reserves
    its images and estimated GPU seconds; completion settles the difference
    between measured and estimated GPU seconds; failure or cancellation
    refunds what was reserved for the job.
    """

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_user_created", "user_id", "created_at"),
        Index("ix_usage_ledger_team_created", "team_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(8))  # reserve | settle | refund
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[Optional[int]] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    job_id: Mapped[Optional[uuid.UUID]] = mapped_column(Uuid, index=True)
    campaign_id: Mapped[Optional[uuid.UUID]] = mapped_column(Uuid, index=True)
    model_id: Mapped[Optional[str]] = mapped_column(String(128))
    images: Mapped[int] = mapped_column(Integer, default=0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


# Where a job was submitted from: farm's REST API (the CLI and farm.client use
# it), the dashboard, a campaign, or an adapter for another tool's interface.
INTERFACES = ("api", "dashboard", "campaign", "openai", "a1111", "fooocus", "bfl")


class Job(Timestamped, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_priority_created", "status", "priority", "created_at"),
        Index("ix_jobs_finished_at", "finished_at"),
        Index("ix_jobs_campaign_created", "campaign_id", "created_at", "id"),
        Index("ix_jobs_user_status", "user_id", "status"),  # max_queued_jobs counts
        # The jobs history, newest first (dashboard/data.py); migration 0010 also adds, on
        # Postgres only, the GIN index ix_jobs_prompt_search over the prompt for full-text search.
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_user_created", "user_id", "created_at", "id"),
        Index("ix_jobs_campaign_index", "campaign_id", "campaign_index", "id"),  # gallery order, grid cells
        Index("ix_jobs_campaign_status_index", "campaign_id", "status", "campaign_index", "id"),  # gallery by status
        Index("ix_jobs_updated_at", "updated_at"),  # the live scheduler reads the rows changed since its last pass
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    campaign_id: Mapped[Optional[uuid.UUID]] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    # A campaign job's place in its expansion (0-based, matrix then rows) and
    # its axis values ({matrix key: value, "row": row number}); None outside campaigns.
    campaign_index: Mapped[Optional[int]] = mapped_column(Integer)
    campaign_axes: Mapped[Optional[dict[str, Any]]]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    # The status before the latest transition (farm.states sets it in the same
    # UPDATE, so RETURNING names what the job left, for farm.tallies).
    previous_status: Mapped[Optional[str]] = mapped_column(String(16))
    # The interface the job came through (INTERFACES): farm's API, the dashboard, or
    # another tool's API that farm speaks (farm/api/adapters); kept in the lineage.
    interface: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    # Its own webhook (farm.spec.WebhookRequest): announced once when it ends;
    # the secret signs deliveries and is never shown after submission.
    webhook_url: Mapped[Optional[str]] = mapped_column(String(2048))
    webhook_secret: Mapped[Optional[str]] = mapped_column(String(128))
    # The output this job renders again (POST /outputs/{id}/rerender).
    rerender_of: Mapped[Optional[uuid.UUID]] = mapped_column(Uuid, index=True)
    # The output an image-to-image job (vary, upscale, inpaint, ...) starts from, set at
    # submission from the resolved request: the image page lists what was made from it.
    parent_output: Mapped[Optional[uuid.UUID]] = mapped_column(Uuid, index=True)
    # Estimated GPU seconds reserved against quotas at submission.
    reserved_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # A registry id; no foreign key, so a model removed from the registry
    # leaves its finished jobs' history readable (migration 0017).
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    # The request as submitted and the parameters resolved from it.
    request: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    num_images: Mapped[int] = mapped_column(Integer, default=1)
    seed: Mapped[int] = mapped_column(BigInteger)
    worker_id: Mapped[Optional[str]] = mapped_column(String(128), index=True)
    # The worker process (Worker.instance_id) running this attempt; only it
    # renews the lease.
    worker_instance: Mapped[Optional[str]] = mapped_column(String(32))
    lease_expires_at: Mapped[Optional[dt.datetime]]
    # Attempts that ended in an error or a lost worker; FARM_MAX_ATTEMPTS caps
    # these. A job handed back by a stopping worker starts a new attempt
    # (fencing) without adding one.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Workers this job must not go to again (out of memory there).
    excluded_workers: Mapped[list[Any]] = mapped_column(default=list)
    # Preemption at step boundaries (farm/workers/resume.py): the scheduler
    # sets preempt_requested on a running attempt; its worker stops at the
    # next step, writes a checkpoint to the store under resume_key and
    # re-queues the job (preemptions + 1); the next attempt continues from it.
    preempt_requested: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resume_key: Mapped[Optional[str]] = mapped_column(String(1024))
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    eta_s: Mapped[Optional[float]] = mapped_column(Float)
    error: Mapped[Optional[str]] = mapped_column(Text)
    # Measured on the worker (model load + render), for fair share and quotas.
    gpu_seconds: Mapped[Optional[float]] = mapped_column(Float)
    assigned_at: Mapped[Optional[dt.datetime]]
    started_at: Mapped[Optional[dt.datetime]]
    finished_at: Mapped[Optional[dt.datetime]]
    # When the job is due (its campaign's deadline counts for a campaign's
    # jobs: the scheduler reads both); set at the end when it ended late:
    # seconds past the deadline.
    deadline: Mapped[Optional[dt.datetime]]
    deadline_missed_s: Mapped[Optional[float]] = mapped_column(Float)

    user: Mapped[User] = relationship(lazy="raise")
    outputs: Mapped[list["Output"]] = relationship(back_populates="job", order_by="Output.index", lazy="selectin")


class Output(Timestamped, Base):
    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(512), unique=True)
    sidecar_key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(32))
    content_sha256: Mapped[str] = mapped_column(String(64))
    byte_size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    lineage: Mapped[dict[str, Any]]

    job: Mapped[Job] = relationship(back_populates="outputs", lazy="raise")
