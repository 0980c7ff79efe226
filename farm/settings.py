"""The one typed settings object, read from ``FARM_`` environment variables.

Unset means the embedded default (SQLite, a local directory store and a
filesystem Celery transport under ``FARM_HOME``). Nothing here opens a
connection; :func:`get_settings` reads the environment once per process and
:func:`override_settings` swaps the object in tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".farm"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Directory for embedded data: SQLite file, local store, broker folders, model cache.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL of the database; a plain postgresql:// URL works. Unset: SQLite under FARM_HOME.")
    broker_url: str | None = Field(default=None, description="Celery broker URL (redis://...). Unset: a filesystem transport under FARM_HOME.")
    redis_namespace: str = Field(default="", pattern=r"^([A-Za-z0-9_.-]+:)?$", description="Prefix of every Redis key and channel this farm uses (Celery queues and event channels), ending in ':', e.g. 'studio-a:'. Farms that share one Redis database need different ones, or they take each other's render messages. Empty: no prefix.")
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint URL such as http://127.0.0.1:9000. Unset: a local directory store under FARM_HOME.")
    s3_access_key: str = Field(default="", description="S3 access key.")
    s3_secret_key: str = Field(default="", description="S3 secret key.")
    s3_bucket: str = Field(default="farm", description="S3 bucket for images and lineage sidecars; created if missing.")
    s3_region: str = Field(default="us-east-1", description="S3 region used for signing.")
    s3_public_endpoint: str | None = Field(default=None, description="S3 URL that clients reach, used in presigned image URLs when FARM_S3_ENDPOINT is an internal address (e.g. http://minio:9000 in compose). Unset: FARM_S3_ENDPOINT.")
    s3_presign_s: int = Field(default=3600, ge=60, description="Lifetime of presigned image URLs, seconds.")
    secret_key: str | None = Field(default=None, description="Secret for signing dashboard sessions. Unset: generated once and kept under FARM_HOME.")
    session_lifetime_s: int = Field(default=43200, ge=60, le=31_536_000, description="Lifetime of a dashboard sign-in, seconds, counted from the sign-in; it also ends at sign-out, token revocation, password change or by an admin.")

    model_cache: Path | None = Field(default=None, description="Download cache for hub models, shared by the workers of a machine. Unset: FARM_HOME/models.")
    hub_endpoint: str | None = Field(default=None, description="Model hub URL for downloads (a mirror or a local hub); unset: HF_ENDPOINT or the public hub.")
    hub_token: str | None = Field(default=None, description="Token for private or gated hub models; unset: HF_TOKEN.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Device a worker renders on.")
    worker_name: str | None = Field(default=None, description="Worker id; unset: the host name.")
    worker_vram_gb: float | None = Field(default=None, gt=0, description="VRAM budget of a worker in GB. Required on CPU (stands in for GPU memory); on CUDA it caps the real free memory.")
    worker_models: str | None = Field(default=None, description="Comma-separated model ids a worker may serve; unset: every registered model.")
    worker_preload: str | None = Field(default=None, description="Comma-separated model ids a worker loads at start.")
    worker_speed: float = Field(default=1.0, gt=0, description="Relative speed of this worker's GPU (1.0 = reference); the scheduler prefers faster workers.")
    worker_load_gbps: float = Field(default=2.0, gt=0, description="How fast this worker loads weights into VRAM, GB/s; prices model loads for the scheduler.")
    worker_ram_cache_gb: float = Field(default=0.0, ge=0, description="Host memory, in GB, a worker keeps models evicted from the GPU in (pinned on CUDA), least recently evicted out first, so the next job for one copies it back instead of reading it from disk; 0 turns the tier off.")
    worker_h2d_gbps: float = Field(default=12.0, gt=0, description="Host-to-GPU copy rate, GB/s, that prices a load from the host tier for the scheduler when it is not measured: a CUDA worker measures its own at start, a CPU worker reports this figure.")
    worker_gpu_factor: float = Field(default=1.0, gt=0, description="GPU-class factor: measured render seconds on this worker are multiplied by it before they count against quotas.")
    worker_max_pixels: int = Field(default=4_194_304, gt=0, description="Largest image (width*height) a worker accepts.")
    render_time_limit_s: int = Field(default=1800, gt=0, description="Hard time limit of one render task.")
    worker_describe_model: str | None = Field(default=None, description="A local folder with an image-to-text model (transformers: AutoProcessor + AutoModelForImageTextToText, e.g. BLIP, GIT, Florence-2) this worker describes images with (POST /api/v1/describe); unset: the worker offers no describe.")
    worker_describe_prompt: str | None = Field(default=None, description="Text given to the describe model with the image, for models that take a task prompt (Florence-2: '<MORE_DETAILED_CAPTION>'); unset: the image alone.")
    describe_wait_s: float = Field(default=60.0, gt=0, le=600, description="How long POST /api/v1/describe waits for a worker's answer before a 504.")

    heartbeat_s: float = Field(default=2.0, gt=0, description="Seconds between worker heartbeats.")
    heartbeat_timeout_s: float = Field(default=10.0, gt=0, description="A worker silent this long is declared lost and its jobs re-queued.")
    lease_s: float = Field(default=30.0, gt=0, description="Lease on an assignment; renewed by the worker's heartbeat while it runs the job.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts before a job fails for good.")
    db_retry_s: float = Field(default=60.0, ge=0, description="How long a process keeps retrying a database call through an outage (backoff with jitter) before it gives up on that call; a worker keeps a rendered result this long and then lets its lease hand the job on.")
    storage_retry_s: float = Field(default=30.0, ge=0, description="How long one object-store call is retried through an outage before the attempt is given up (the job is re-queued with attempt + 1 until FARM_MAX_ATTEMPTS).")
    storage_timeout_s: float = Field(default=30.0, gt=0, description="Connect and read timeout of one object-store request; a store that hangs longer is retried.")
    worker_grace_s: float = Field(default=30.0, ge=0, description="On SIGTERM a worker finishes the image it renders if it can within this many seconds; otherwise it hands the job back to the queue at once.")
    orphan_grace_s: float = Field(default=3600.0, ge=0, description="Objects no output row references are deleted by the janitor once older than this (seconds).")
    janitor_interval_s: float = Field(default=300.0, gt=0, description="Seconds between two sweeps of the leading scheduler's janitor for objects of superseded, failed and canceled attempts.")
    janitor_lookback_s: float = Field(default=86400.0, gt=0, description="The janitor sweeps the objects of jobs changed within this many seconds.")
    scheduler_poll_s: float = Field(default=1.0, gt=0, description="Longest the scheduler sleeps between passes when nothing wakes it.")
    preemption: bool = Field(default=True, description="Let a waiting job of a higher priority class stop a running lower-class render at a step boundary (checkpointed, continued later to the same bytes) when no slot frees soon.")
    preempt_wait_s: float = Field(default=10.0, ge=0, description="Preemption: a slot predicted to free within this many seconds is waited for instead.")
    max_preemptions: int = Field(default=2, ge=0, description="Preemption: a render is stopped at most this many times.")
    progress_interval_s: float = Field(default=0.25, ge=0, description="Least time between two progress writes of one job.")

    webhook_backoff_s: float = Field(default=5.0, gt=0, description="First retry delay of a failed webhook delivery; it doubles with each attempt (capped at an hour).")
    webhook_allow: str | None = Field(default=None, description="Comma-separated hosts and networks (CIDR) webhooks may reach although they are not public, e.g. an internal receiver: 'hooks.internal,10.20.0.0/16'. Unset: public addresses only.")
    webhook_max_attempts: int = Field(default=8, ge=1, description="Webhook deliveries tried before giving up.")
    styles_dir: Path | None = Field(default=None, description="Directory of user style files (*.json lists of {name, category, positive, negative}); they add to and override the built-in library.")
    presets_dir: Path | None = Field(default=None, description="Directory of user preset files (*.json); they add to and override the built-in presets.")
    wildcards_dir: Path | None = Field(default=None, description="Directory of user wildcard files (name.txt, one option per line, # comments; subfolders give folder/name); they add to and override the built-in wildcards that __name__ in a prompt picks from.")
    prompt_expansion_engine: Literal["builtin", "lm"] = Field(default="builtin", description="Prompt expansion: 'builtin' (curated vocabulary, no model) or 'lm' (a causal language model).")
    prompt_expansion_model: str | None = Field(default=None, description="Local directory or hub id of the causal LM used when FARM_PROMPT_EXPANSION_ENGINE=lm.")
    max_prompt_chars: int = Field(default=4000, gt=0, description="Longest accepted prompt or negative prompt.")
    max_request_bytes: int = Field(default=1_048_576, gt=0, description="Largest accepted request body.")
    max_pixels: int = Field(default=4_194_304, gt=0, description="Largest image (width*height) a request may ask for.")
    max_upload_bytes: int = Field(default=20_971_520, gt=0, description="Largest image accepted by POST /api/v1/uploads.")
    max_upload_pixels: int = Field(default=16_777_216, gt=0, description="Largest upload (width*height, read from the file's header before decoding) accepted by POST /api/v1/uploads.")
    upload_decodes: int = Field(default=2, gt=0, description="Uploads the api decodes at once; more wait (up to 30 s, then 503), so uploads cannot exhaust its memory.")
    accelerator_loras: dict[str, dict[str, str]] = Field(default_factory=dict, description='Accelerating LoRA per family and performance mode, as JSON: {"sdxl": {"lightning": "sdxl-lightning-4step", "extreme_speed": "lcm-sdxl"}}; each a registered LoRA id.')
    ip_adapters: dict[str, str] = Field(default_factory=dict, description='IP-Adapter per family for image prompts, as JSON: {"sdxl": "/models/ip-adapter-sdxl"}; each a folder with one .safetensors adapter file and an image_encoder/ folder.')
    upscale_tile_pixels: int = Field(default=1_048_576, gt=0, description="Upscales larger than this (width*height) are refined tile by tile, each tile at most this size.")
    max_steps: int = Field(default=150, gt=0, description="Most sampling steps a request may ask for.")
    max_images_per_job: int = Field(default=8, gt=0, description="Most images one job may ask for.")
    default_model: str | None = Field(default=None, description="Model used when a request names none; unset: the first registered model.")
    adapter_wait_s: float = Field(default=600.0, gt=0, le=3600, description="Longest a synchronous adapter request (OpenAI Images under /v1/images) waits for its job before answering a timeout that names the job; the job itself goes on.")

    public_url: str | None = Field(default=None, description="The address people reach the dashboard at, e.g. https://farm.example.com. When it is https, session cookies are sent only over HTTPS (Secure).")
    metrics_port: int | None = Field(default=None, gt=0, lt=65536, description="Port on which farm scheduler and farm worker serve /metrics, /healthz/live and /healthz/ready (the api serves them on its own port). Unset: no metrics server.")
    metrics_host: str = Field(default="0.0.0.0", description="Address the scheduler's and worker's metrics server binds to (FARM_METRICS_PORT).")
    metrics_token: str | None = Field(default=None, description="When set, /metrics answers only requests with 'Authorization: Bearer <this token>' (a Prometheus scrape config's bearer_token). Unset: /metrics is open.")
    throttle_storage_url: str | None = Field(default=None, description="Where throttling counts live, as a storage URL of the limits library (redis://host:6379/1, memory://). Unset: the farm's Redis (FARM_BROKER_URL) when it is one, so all api replicas share the counts; else memory:// (farm up).")
    throttle_key_prefix: str = Field(default="farm", description="Prefix of the throttling keys in their storage, so farms that share one Redis keep their counts apart.")
    throttle_sign_in_per_address: str = Field(default="10/minute", description="Failed dashboard sign-ins (password or token) one client address may make, e.g. '10/minute' or '100 per hour'; the next attempt is answered 429 with Retry-After, right password or not.")
    throttle_sign_in_per_name: str = Field(default="5/minute", description="Failed dashboard sign-ins for one user name from any address (unknown names count like known ones); the next is answered 429 with Retry-After.")
    throttle_token_failures_per_address: str = Field(default="30/minute", description="Failed API bearer-token checks (unknown or revoked tokens) one client address may make; the next request with a token is answered 429 with Retry-After.")
    forwarded_for_hops: int = Field(default=0, ge=0, description="Reverse proxies in front of the api that append to X-Forwarded-For; the client address (what throttling counts by) is read that many entries from its end. 0: the connecting address. Set it only behind proxies you run, since clients can write the header themselves.")
    api_host: str = Field(default="127.0.0.1", description="Address farm api binds to.")
    api_port: int = Field(default=8000, gt=0, lt=65536, description="Port farm api binds to.")
    api_threads: int = Field(default=16, gt=0, description="Request threads of farm api.")
    api_processes: int = Field(default=1, ge=1, le=256, description="Server processes of farm api sharing its one listening socket (metrics merged across them through prometheus_client's multiprocess mode); each has FARM_API_THREADS request threads.")
    preview_every_steps: int = Field(default=2, ge=0, description="A worker publishes a small preview of the current latents every this many denoising steps (a fixed latent-to-RGB projection, no extra model); 0: none.")
    preview_side: int = Field(default=128, ge=16, le=512, description="Longest side in pixels of a live preview JPEG.")
    sse_max_s: float = Field(default=600.0, gt=0, description="Longest a Server-Sent Events stream stays open before it ends with an 'end' event (clients reconnect with Last-Event-ID).")
    sse_heartbeat_s: float = Field(default=15.0, gt=0, description="A comment line is sent on an idle event stream this often, so proxies keep it open.")
    sse_poll_s: float = Field(default=1.0, gt=0, description="How often an event stream reads the database for status changes and outputs when nothing woke it (with Redis the wake-ups come first; this is the safety net, stretched tenfold).")
    log_level: str = Field(default="INFO", description="Log level of every farm process.")
    log_format: Literal["text", "json"] = Field(default="text", description="How farm processes write their log lines: 'text' (one readable line) or 'json' (one JSON object a line with time, level, logger, message and, where they apply, job_id, attempt, worker, campaign, user), for a log collector.")
    celery_events: bool = Field(default=False, description="Workers send Celery task events and the scheduler a task-sent event, so Flower lists tasks (Redis farms only). Off: only worker heartbeats, which is all `celery inspect` and Flower's worker list need.")

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        # A plain postgresql:// URL would make SQLAlchemy look for psycopg2;
        # farm ships psycopg 3.
        if value and value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'farm.sqlite'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def store_folder(self) -> Path:
        return self.home / "store"

    @property
    def resolved_model_cache(self) -> Path:
        return self.model_cache or self.home / "models"

    @property
    def resolved_worker_name(self) -> str:
        return self.worker_name or socket.gethostname()

    @property
    def redis_url(self) -> str | None:
        url = self.broker_url
        return url if url and url.startswith(("redis://", "rediss://")) else None

    def worker_model_ids(self) -> list[str] | None:
        return _split_ids(self.worker_models)

    def preload_model_ids(self) -> list[str]:
        return _split_ids(self.worker_preload) or []


def _split_ids(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


_settings: Settings | None = None


def get_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings()
    return _settings


@contextlib.contextmanager
def override_settings(**changes) -> Iterator[Settings]:
    """Replace the process settings for the duration of a block (tests)."""
    global _settings
    previous = _settings
    _settings = Settings(**{**get_settings().model_dump(), **changes})
    try:
        yield _settings
    finally:
        _settings = previous
