"""The Celery entry module: the lazily built module-level app that Celery's
tools load, and what remote control and events are on for each broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from farm.settings import Settings, override_settings
from farm.workers import celery_app

REDIS = "redis://127.0.0.1:6379/0"  # never connected to here


def _env(tmp_path, **farm) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
    env.update(FARM_HOME=str(tmp_path / "home"), **{f"FARM_{key.upper()}": value for key, value in farm.items()})
    return env


@pytest.fixture()
def fresh_module_app():
    """The module's app is built on first access; forget it around a test."""
    vars(celery_app).pop("app", None)
    yield
    built = vars(celery_app).pop("app", None)
    if built is not None:
        built.close()


def test_importing_the_module_builds_no_app_and_reads_no_settings(tmp_path):
    code = ("import farm.settings, farm.workers.celery_app as m; "
            "assert 'app' not in vars(m) and farm.settings._settings is None; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_module_app_is_built_once_from_the_process_settings(fresh_module_app):
    with override_settings(broker_url=REDIS, redis_namespace="studio-a:", celery_events=True):
        app = celery_app.app
        assert celery_app.app is app
    assert app.conf.broker_url == REDIS
    assert app.conf.broker_transport_options["global_keyprefix"] == "studio-a:"
    assert app.conf.worker_enable_remote_control is True
    assert app.conf.worker_send_task_events is True and app.conf.task_send_sent_event is True
    # A render worker's contract is unchanged.
    assert app.conf.worker_prefetch_multiplier == 1 and app.conf.task_acks_late is True


def test_other_missing_attributes_are_still_attribute_errors():
    with pytest.raises(AttributeError, match="celery"):
        celery_app.celery  # noqa: B018 - Celery's loader probes this name


def test_task_events_are_off_by_default_and_on_redis_only(tmp_path):
    plain = celery_app.create_celery(Settings(broker_url=REDIS))
    assert plain.conf.worker_send_task_events is False and plain.conf.task_send_sent_event is False
    assert plain.conf.worker_enable_remote_control is True
    embedded = celery_app.create_celery(Settings(home=tmp_path, broker_url=None, celery_events=True))
    # The folder broker carries neither remote control nor events.
    assert embedded.conf.worker_enable_remote_control is False
    assert embedded.conf.worker_send_task_events is False
    with pytest.raises(celery_app.RemoteControlUnavailableError, match="FARM_BROKER_URL=redis://"):
        embedded.control.inspect(timeout=0.1).ping()
    for app in (plain, embedded):
        app.close()


def test_celery_inspect_against_an_embedded_farm_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "farm.workers.celery_app", "inspect", "ping"],
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("Error:") and "embedded" in line and "FARM_BROKER_URL=redis://" in line


def test_a_render_task_binds_its_job_and_attempt_from_prerun_to_postrun():
    from celery.signals import task_postrun, task_prerun

    from farm import logs
    from farm.workers.tasks import render_job

    logs.bind_fields(user=9)  # left by earlier work on this thread: a task starts clean
    task = render_job._get_current_object()
    task_prerun.send(sender=task, task_id="t-1", task=task, args=("job-1", "2"), kwargs={})
    # No runtime in this process, so no worker field; the attempt is a number.
    assert logs.bound_fields() == {"job_id": "job-1", "attempt": 2}
    task_postrun.send(sender=task, task_id="t-1", task=task, args=("job-1", "2"), kwargs={}, retval="succeeded")
    assert logs.bound_fields() == {"user": 9}
    logs.scope_fields()  # leave this test's thread clean
