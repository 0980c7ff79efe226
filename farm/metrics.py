"""Every Prometheus metric the farm exports, in one place (prometheus_client).

The api, the scheduler and the workers import the objects below and update
them where the event happens; nothing here opens a connection or reads
configuration. Label values are bounded: models and workers are the farm's
own registered ids, user classes are roles, statuses, states, reasons and
results are the short vocabularies named beside each metric.

Each kind of process registers only its own part of the catalogue
(:func:`register_component`), so its ``/metrics`` shows nothing of the others.
Gauges carry a ``multiprocess_mode`` for ``farm api --processes N``, where
prometheus_client keeps each process's values in files under
``PROMETHEUS_MULTIPROC_DIR`` and a scrape merges them (see
:func:`render_latest`). Outside that mode the modes are ignored.
"""

from __future__ import annotations

import logging
import os
import threading

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from farm import __version__

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Buckets in seconds, spanning what each duration really takes on this farm:
# a queue wait runs from an instant to hours behind a campaign, a render from
# a fraction of a second (a tiny model, a lightning preset) to minutes, a
# model load from cache hits to a cold hub download.
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
RENDER_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
LOAD_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 900)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Bounded label vocabularies (documentation for readers and tests).
ACTIVE_STATUSES = ("assigned", "running")
WORKER_STATES = ("online", "draining", "stopping", "offline")
REQUEUE_REASONS = ("lease_expired", "worker_lost", "preempted")
WEBHOOK_RESULTS = ("delivered", "retrying", "gave_up", "refused")
FAILURE_REASONS = ("oom", "bad_input", "storage", "database", "model_load", "canceled", "timeout", "error")
LOAD_SOURCES = ("disk", "hub")

# --- every process ---------------------------------------------------------
BUILD_INFO = Gauge("farm_build_info", "Always 1; the labels say which farm version runs in which component.",
                   ["version", "component"], multiprocess_mode="livemax", registry=None)

# --- api -------------------------------------------------------------------
HTTP_REQUEST_SECONDS = Histogram(
    "farm_http_request_duration_seconds",
    "Time the api took to answer a request, by Flask URL rule ('unmatched' when none matched), method and status.",
    ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=None)

# --- scheduler (the leader fills the gauges from its pass snapshot) -------
QUEUED_JOBS = Gauge("farm_queued_jobs", "Queued jobs at the leader's last pass, by model and the submitting user's role.",
                    ["model", "user_class"], multiprocess_mode="livemostrecent", registry=None)
ACTIVE_JOBS = Gauge("farm_active_jobs", "Jobs placed on workers at the leader's last pass, by model and status (assigned|running).",
                    ["model", "status"], multiprocess_mode="livemostrecent", registry=None)
QUEUE_WAIT_SECONDS = Histogram("farm_queue_wait_seconds", "Time a job spent queued before the scheduler assigned it, by model.",
                               ["model"], buckets=WAIT_BUCKETS, registry=None)
SCHEDULER_PASS_SECONDS = Histogram("farm_scheduler_pass_seconds", "Duration of one scheduler pass (snapshot, policy, writes, dispatch).",
                                   buckets=PASS_BUCKETS, registry=None)
SCHEDULER_DECISION_SECONDS = Histogram("farm_scheduler_decision_seconds", "Time the placement policy took in one scheduler pass.",
                                       buckets=PASS_BUCKETS, registry=None)
SCHEDULER_ASSIGNMENTS = Counter("farm_scheduler_assignments", "Jobs the scheduler assigned to workers, by model.", ["model"], registry=None)
SCHEDULER_EVICTIONS = Counter("farm_scheduler_evictions", "Models the scheduler asked a worker to unload to make room, by model.", ["model"], registry=None)
SCHEDULER_LEADER = Gauge("farm_scheduler_leader", "1 on the scheduler that leads, 0 on a standby.", multiprocess_mode="livemax", registry=None)
WORKERS = Gauge("farm_workers", "Registered workers by state (online|draining|stopping|offline) at the leader's last pass.",
                ["state"], multiprocess_mode="livemostrecent", registry=None)
WORKER_HEARTBEAT_AGE_SECONDS = Gauge("farm_worker_heartbeat_age_seconds", "Seconds since each live worker's last heartbeat, at the leader's last pass.",
                                     ["worker"], multiprocess_mode="livemostrecent", registry=None)
JOBS_REQUEUED = Counter("farm_jobs_requeued", "Jobs put back in the queue, by reason (lease_expired|worker_lost: the scheduler; preempted: the worker that checkpointed it).", ["reason"], registry=None)
WEBHOOK_DELIVERIES = Counter("farm_webhook_deliveries", "Webhook delivery attempts by result (delivered|retrying|gave_up|refused).", ["result"], registry=None)

# --- worker ----------------------------------------------------------------
RENDER_SECONDS = Histogram("farm_render_seconds", "Time a worker spent rendering one job (inference, without the model load), by model.",
                           ["model"], buckets=RENDER_BUCKETS, registry=None)
MODEL_LOAD_SECONDS = Histogram("farm_model_load_seconds", "Time a worker took to load a model, by model and source (disk|hub|host: its host-memory tier).",
                               ["model", "source"], buckets=LOAD_BUCKETS, registry=None)
IMAGES_PRODUCED = Counter("farm_images_produced", "Images a worker rendered and stored, by model.", ["model"], registry=None)
IMAGES_FAILED = Counter("farm_images_failed",
                        "Images a worker did not produce, by model and reason (oom|bad_input|storage|database|model_load|canceled|timeout|error).",
                        ["model", "reason"], registry=None)
WORKER_VRAM_TOTAL_BYTES = Gauge("farm_worker_vram_total_bytes", "GPU memory of the worker (CUDA: the device's, capped by FARM_WORKER_VRAM_GB; CPU: the configured budget).",
                                ["worker"], multiprocess_mode="livemostrecent", registry=None)
WORKER_VRAM_USED_BYTES = Gauge("farm_worker_vram_used_bytes", "GPU memory in use on the worker (CPU: the budget its loaded models take).",
                               ["worker"], multiprocess_mode="livemostrecent", registry=None)
WORKER_VRAM_FREE_BYTES = Gauge("farm_worker_vram_free_bytes", "GPU memory the worker can still use for models.",
                               ["worker"], multiprocess_mode="livemostrecent", registry=None)
WORKER_MODELS_LOADED = Gauge("farm_worker_models_loaded", "Number of models the worker holds in memory.", ["worker"],
                             multiprocess_mode="livemostrecent", registry=None)
WORKER_MODEL_LOADED = Gauge("farm_worker_model_loaded", "1 for each model the worker holds in memory.", ["worker", "model"],
                            multiprocess_mode="livemostrecent", registry=None)
WORKER_HOST_MODEL = Gauge("farm_worker_host_model", "1 for each model the worker keeps in its host-memory tier (evicted from the GPU, FARM_WORKER_RAM_CACHE_GB).",
                          ["worker", "model"], multiprocess_mode="livemostrecent", registry=None)
WORKER_BUSY = Gauge("farm_worker_busy", "1 while the worker renders, 0 while it is idle.", ["worker"], multiprocess_mode="livemostrecent", registry=None)

# What each kind of process registers (and so shows on /metrics): a worker
# does not export empty scheduler histograms, nor the api a leader gauge.
# `farm up` runs the api and the scheduler in one process and shows both.
COMPONENT_METRICS: dict[str, tuple[MetricWrapperBase, ...]] = {
    "api": (BUILD_INFO, HTTP_REQUEST_SECONDS),
    "scheduler": (BUILD_INFO, QUEUED_JOBS, ACTIVE_JOBS, QUEUE_WAIT_SECONDS, SCHEDULER_PASS_SECONDS,
                  SCHEDULER_DECISION_SECONDS, SCHEDULER_ASSIGNMENTS, SCHEDULER_EVICTIONS, SCHEDULER_LEADER, WORKERS,
                  WORKER_HEARTBEAT_AGE_SECONDS, JOBS_REQUEUED, WEBHOOK_DELIVERIES),
    "worker": (BUILD_INFO, RENDER_SECONDS, MODEL_LOAD_SECONDS, IMAGES_PRODUCED, IMAGES_FAILED, WORKER_VRAM_TOTAL_BYTES,
               WORKER_VRAM_USED_BYTES, WORKER_VRAM_FREE_BYTES, WORKER_MODELS_LOADED, WORKER_MODEL_LOADED, WORKER_HOST_MODEL,
               WORKER_BUSY, JOBS_REQUEUED),
}
CATALOGUE: tuple[MetricWrapperBase, ...] = tuple(dict.fromkeys(m for ms in COMPONENT_METRICS.values() for m in ms))
COMPONENTS = tuple(COMPONENT_METRICS)

_registered: set[str] = set()  # metric names registered with REGISTRY by this process
_register_lock = threading.Lock()


_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_metric_names() -> set[str]:
    """The sample names a scrape of the farm can show, as Prometheus stores
    them (``farm_render_seconds_bucket``, ``farm_scheduler_assignments_total``,
    ``farm_queued_jobs`` ...): what a dashboard or an autoscaler trigger may name."""
    names = set()
    for metric in CATALOGUE:
        for suffix in _SAMPLE_SUFFIXES[metric._type]:
            names.add(metric._name + suffix)
    return names


def register_component(component: str) -> None:
    """Register the metrics of ``component`` (api, scheduler, worker) with
    prometheus_client's default registry, once per process."""
    if component not in COMPONENT_METRICS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, not {component!r}")
    with _register_lock:
        for metric in COMPONENT_METRICS[component]:
            if metric._name not in _registered:
                REGISTRY.register(metric)
                _registered.add(metric._name)


def note_build_info(component: str) -> None:
    """Register the component's metrics and set ``farm_build_info{version, component} 1``."""
    register_component(component)
    BUILD_INFO.labels(version=__version__, component=component).set(1)


def fill_gauge(gauge: Gauge, values: dict[tuple[str, ...] | str, float]) -> None:
    """Replace every labelled child of ``gauge`` with ``values`` (label
    tuple → value), so a model or worker that went away stops being shown
    instead of keeping its last value."""
    wanted = {key if isinstance(key, tuple) else (key,): value for key, value in values.items()}
    for labels in list(gauge._metrics):
        if labels not in wanted:
            gauge.remove(*labels)
    for labels, value in wanted.items():
        gauge.labels(*labels).set(value)


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process, when it runs in
    prometheus_client's multiprocess mode (``farm api --processes N``)."""
    return os.environ.get(MULTIPROC_ENV) or None


def render_latest() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, with its
    content type. In multiprocess mode, every process's values merged."""
    directory = multiprocess_dir()
    if directory:
        return generate_latest(_RegisteredFromFiles(directory)), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class _RegisteredFromFiles:
    """Every process's values from the multiprocess files, limited to the
    metrics this process registered (the files also hold the unlabelled
    metrics every process creates on import)."""

    def __init__(self, directory: str) -> None:
        from prometheus_client import multiprocess

        self.collector = multiprocess.MultiProcessCollector(None, path=directory)

    def collect(self):
        return (family for family in self.collector.collect() if family.name in _registered)
