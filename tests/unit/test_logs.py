"""farm.logs: fields bound by context, the JSON and text formats."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid

import pytest

from farm import logs


@pytest.fixture()
def captured():
    """A farm handler on the root logger writing into a buffer; removed afterwards."""
    stream = io.StringIO()

    def install(log_format: str):
        handler = logs.configure_logging("INFO", log_format, stream=stream, force=True)
        return stream, handler

    yield install
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs._FarmHandler)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_the_bound_fields(captured):
    stream, _ = captured("json")
    log = logging.getLogger("farm.test")
    job = uuid.uuid4()
    with logs.log_context(job_id=job, attempt=2, worker="wa"):
        log.info("rendering %s", "a lighthouse")
    log.warning("outside")
    inside, outside = _lines(stream)
    assert list(inside)[:4] == ["time", "level", "logger", "message"]
    assert inside["message"] == "rendering a lighthouse" and inside["level"] == "INFO" and inside["logger"] == "farm.test"
    assert inside["job_id"] == str(job) and inside["attempt"] == 2 and inside["worker"] == "wa"
    assert inside["time"].endswith("+00:00")
    assert not {"job_id", "attempt", "worker"} & set(outside)


def test_nested_contexts_add_fields_and_restore_the_outer_ones(captured):
    stream, _ = captured("json")
    log = logging.getLogger("farm.test")
    with logs.log_context(job_id="j1", attempt=1):
        with logs.log_context(attempt=2, campaign=7):
            log.info("inner")
            assert logs.bound_fields() == {"job_id": "j1", "attempt": 2, "campaign": 7}
        log.info("outer")
    log.info("none")
    inner, outer, none = _lines(stream)
    assert (inner["attempt"], inner["campaign"]) == (2, 7)
    assert outer["attempt"] == 1 and "campaign" not in outer and outer["job_id"] == "j1"
    assert "job_id" not in none and logs.bound_fields() == {}


def test_a_context_is_restored_when_its_block_raises(captured):
    with pytest.raises(RuntimeError):
        with logs.log_context(job_id="j1"):
            raise RuntimeError("boom")
    assert logs.bound_fields() == {}


def test_scope_fields_drops_what_an_earlier_unit_of_work_left(captured):
    logs.bind_fields(user=3)  # a request that never reset its fields
    token = logs.scope_fields(worker="wa")
    assert logs.bound_fields() == {"worker": "wa"}
    logs.reset_fields(token)
    assert logs.bound_fields() == {"user": 3}
    logs.scope_fields()  # leave this test's thread clean


def test_fields_do_not_leak_into_other_threads(captured):
    stream, _ = captured("json")
    seen = {}
    with logs.log_context(job_id="j1"):
        thread = threading.Thread(target=lambda: seen.update(logs.bound_fields()))
        thread.start()
        thread.join()
    assert seen == {}


def test_unknown_fields_and_none_values(captured):
    with pytest.raises(ValueError, match="unknown log fields"):
        logs.bind_fields(job="j1")
    with logs.log_context(job_id="j1", campaign=None):
        assert logs.bound_fields() == {"job_id": "j1"}


def test_an_explicit_extra_wins_over_a_bound_field(captured):
    stream, _ = captured("json")
    with logs.log_context(worker="wa"):
        logging.getLogger("farm.test").info("x", extra={"worker": "wb"})
    assert _lines(stream)[0]["worker"] == "wb"


def test_exceptions_and_warnings_stay_one_json_line_each(captured):
    import warnings

    stream, _ = captured("json")
    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("farm.test").exception("failed")
    warnings.warn("a library complains")
    failed, warned = _lines(stream)
    assert "ValueError: bad thing" in failed["exc_info"]
    assert warned["logger"] == "py.warnings" and "a library complains" in warned["message"]


def test_text_lines_end_with_the_bound_fields(captured):
    stream, _ = captured("text")
    with logs.log_context(job_id="j1", attempt=3):
        logging.getLogger("farm.test").info("rendering")
    line = stream.getvalue().strip()
    assert line.endswith("INFO farm.test: rendering [job_id=j1 attempt=3]")


def test_configuring_again_replaces_the_farm_handler_only(captured):
    other = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(other)
    try:
        captured("text")
        captured("json")
        ours = [h for h in root.handlers if isinstance(h, logs._FarmHandler)]
        assert len(ours) == 1 and other in root.handlers
    finally:
        root.removeHandler(other)


def test_a_root_logger_configured_by_someone_else_is_left_alone(captured):
    other = logging.NullHandler()
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [other]
    try:
        assert logs.configure_logging("INFO", "json") is None and root.handlers == [other]
    finally:
        root.handlers[:] = saved


def test_api_request_lines_name_the_authenticated_user_and_no_other(sqlite_settings, captured):
    from farm.api import create_app
    from farm.auth import create_user
    from farm.context import build_context
    from farm.events import LocalEvents
    from tests.support.api import auth

    stream, _ = captured("json")
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        alice, token = create_user(session, "alice")
        alice_id = alice.id
    app = create_app(sqlite_settings, context=ctx)

    @app.after_request
    def _log_answer(response):
        logging.getLogger("farm.test").info("answered %s", response.status_code)
        return response

    client = app.test_client()
    assert client.get("/api/v1/me", headers=auth(token)).status_code == 200
    assert client.get("/api/v1/me").status_code == 401  # same thread, no token
    signed, anonymous = [line for line in _lines(stream) if line["logger"] == "farm.test"]
    assert signed["message"] == "answered 200" and signed["user"] == alice_id
    assert anonymous["message"] == "answered 401" and "user" not in anonymous
    assert logs.bound_fields() == {}


def test_torchs_own_log_lines_become_json_once_adopted(captured):
    import torch  # noqa: F401  (it installs its handler on import)

    stream, _ = captured("json")
    torch_logger = logging.getLogger("torch.utils._pytree")
    torch_root = logging.getLogger("torch")
    kept = (list(torch_root.handlers), torch_root.propagate)
    try:
        logs.adopt_library_loggers()
        torch_logger.warning("an Enum subclass is now natively supported")
    finally:
        for handler in kept[0]:
            torch_root.addHandler(handler)
        torch_root.propagate = kept[1]
    (line,) = _lines(stream)
    assert line["logger"] == "torch.utils._pytree" and line["level"] == "WARNING"
