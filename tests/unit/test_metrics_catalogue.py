"""farm/metrics.py: the catalogue's names, the sample names it promises, and
the helpers that fill gauges and render a scrape."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm import __version__, metrics

PROMETHEUS_NAME = re.compile(r"^farm_[a-z0-9_]+$")
# Units a Prometheus name may end in (base units), for the metrics that have one.
UNITS = ("_seconds", "_bytes")


def test_catalogue_names_follow_prometheus_conventions():
    for metric in metrics.CATALOGUE:
        name = metric._name
        assert PROMETHEUS_NAME.match(name), name
        if metric._type == "histogram":
            assert name.endswith(UNITS), f"{name}: a histogram of a duration or size names its base unit"
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to counters itself"


def test_exported_names_are_what_a_scrape_shows():
    """Every catalogue metric, once it has a sample, shows up under the
    names exported_metric_names() promises, and under no other farm name."""
    for component in metrics.COMPONENTS:
        metrics.register_component(component)
    names = metrics.exported_metric_names()
    assert {"farm_queued_jobs", "farm_render_seconds_bucket", "farm_render_seconds_count",
            "farm_scheduler_assignments_total", "farm_webhook_deliveries_total", "farm_build_info",
            "farm_worker_vram_free_bytes", "farm_http_request_duration_seconds_sum"} <= names
    for metric in metrics.CATALOGUE:
        labels = {label: "x" for label in metric._labelnames}
        child = metric.labels(**labels) if labels else metric
        getattr(child, {"counter": "inc", "gauge": "set", "histogram": "observe"}[metric._type])(
            *(() if metric._type == "counter" else (1,)))
    body, content_type = metrics.render_latest()
    assert content_type.startswith("text/plain")
    seen = {sample.name for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name.startswith("farm_") and not sample.name.endswith("_created")}
    assert seen == names
    for metric in metrics.CATALOGUE:
        if metric._labelnames:
            metric.clear()


def test_fill_gauge_drops_labels_that_went_away():
    metrics.register_component("scheduler")
    metrics.fill_gauge(metrics.QUEUED_JOBS, {("m1", "user"): 3, ("m2", "admin"): 1})
    metrics.fill_gauge(metrics.QUEUED_JOBS, {("m1", "user"): 2})
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("farm_queued_jobs", {"model": "m1", "user_class": "user"}) == 2
    assert REGISTRY.get_sample_value("farm_queued_jobs", {"model": "m2", "user_class": "admin"}) is None
    metrics.fill_gauge(metrics.QUEUED_JOBS, {})
    assert REGISTRY.get_sample_value("farm_queued_jobs", {"model": "m1", "user_class": "user"}) is None


def test_build_info_names_version_and_component():
    from prometheus_client import REGISTRY

    metrics.note_build_info("scheduler")
    assert REGISTRY.get_sample_value("farm_build_info", {"version": __version__, "component": "scheduler"}) == 1
    with pytest.raises(ValueError, match="component must be one of"):
        metrics.note_build_info("gateway")
    metrics.BUILD_INFO.clear()


def test_each_component_shows_only_its_own_metrics():
    """A process registers its own part of the catalogue: run alone, a
    worker's scrape has no scheduler or api series."""
    import subprocess
    import sys

    script = ("from farm import metrics; metrics.note_build_info('worker'); "
              "print(metrics.render_latest()[0].decode())")
    scraped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    families = {family.name for family in text_string_to_metric_families(scraped) if family.name.startswith("farm_")}
    assert families == {metric._name for metric in metrics.COMPONENT_METRICS["worker"]}
    with pytest.raises(ValueError, match="component must be one of api, scheduler, worker"):
        metrics.register_component("gateway")
