"""farm.client without a farm: error mapping, retries of 503 answers against a
small HTTP server, the event-stream parser, campaign files, and requests
checked before they are sent."""

from __future__ import annotations

import email.utils
import http.server
import json
import threading
import time

import pytest
import requests

from farm.api import schemas
from farm.client import (Farm, FarmError, InvalidRequest, NotFound, QuotaExceeded, Unavailable, Unreachable,
                         error_from_response, load_campaign_file, parse_sse, retry_after_s, typed_event)

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens


def _response(status: int, body, headers: dict | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response.headers.update(headers or {})
    return response


def _error(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}


def test_error_answers_map_to_classes_with_their_fields():
    invalid = error_from_response(_response(422, _error("validation_error", "the request needs fixing: steps: too many",
                                                         [{"field": "steps", "message": "too many"}])))
    assert type(invalid) is InvalidRequest and invalid.status == 422 and invalid.fields == {"steps": "too many"}
    assert str(invalid) == "HTTP 422: the request needs fixing: steps: too many"

    quota = error_from_response(_response(429, _error("quota_exceeded", "daily images used up",
                                                      {"limit": "images_per_day", "owner": "user"}),
                                          {"Retry-After": "3600"}))
    assert type(quota) is QuotaExceeded and quota.retry_after == 3600 and quota.details["limit"] == "images_per_day"
    assert quota.fields == {}  # details that name no field

    assert type(error_from_response(_response(404, _error("not_found", "no job x")))) is NotFound
    assert type(error_from_response(_response(503, _error("unavailable", "down"), {"Retry-After": "1"}))) is Unavailable
    teapot = error_from_response(_response(418, _error("teapot", "short and stout")))
    assert type(teapot) is FarmError and teapot.code == "teapot"

    proxy = error_from_response(_response(502, b"<html>Bad Gateway</html>"))
    assert type(proxy) is FarmError and str(proxy) == "HTTP 502: unexpected answer from the farm (HTTP 502)"


def test_retry_after_takes_seconds_or_an_http_date():
    assert retry_after_s("120") == 120
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 < retry_after_s(later) <= 60
    assert retry_after_s("soon") is None and retry_after_s(None) is None


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) to the first ``outage`` requests, then 200."""

    outage = 0
    retry_after = "0"
    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(self.command)
        if len(type(self).seen) <= type(self).outage:
            body, status = json.dumps(_error("unavailable", "the database is unavailable")).encode(), 503
        else:
            body, status = b'{"ok": true}', 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", type(self).retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    _Stub.seen, _Stub.outage, _Stub.retry_after = [], 2, "0"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_gets_are_retried_through_a_short_outage_posts_are_not(stub):
    with Farm(stub, "t") as farm:
        assert farm.request("GET", "/api/v1/me").json() == {"ok": True}
        assert _Stub.seen == ["GET", "GET", "GET"]

        _Stub.seen = []
        with pytest.raises(Unavailable) as refused:
            farm.request("POST", "/api/v1/jobs", json={"prompt": "x"})
        assert _Stub.seen == ["POST"] and refused.value.retry_after == 0  # a POST may have queued work


def test_a_retry_after_beyond_the_budget_is_not_waited_for(stub):
    _Stub.retry_after = "600"
    with Farm(stub, "t", retry_budget_s=5) as farm, pytest.raises(Unavailable) as refused:
        farm.request("GET", "/api/v1/me")
    assert _Stub.seen == ["GET"] and refused.value.retry_after == 600


def test_requests_are_checked_before_they_are_sent():
    with Farm(NOWHERE, "t") as farm:
        with pytest.raises(InvalidRequest) as bad:  # not Unreachable: nothing was sent
            farm.submit(prompt="x", steps=0, sampler="fast")
        assert set(bad.value.fields) == {"steps", "sampler"} and bad.value.status == 422
        with pytest.raises(InvalidRequest) as campaign:
            farm.submit_campaign({"name": "x", "base": {"prompt": "y"}, "matrix": {"seed_count": [0]}})
        assert "matrix.seed_count" in campaign.value.fields
        with pytest.raises(Unreachable) as unreachable:
            farm.submit(prompt="x")
        assert "cannot reach the farm at http://127.0.0.1:9" in str(unreachable.value)


def test_from_env_reads_the_url_and_token(monkeypatch):
    for name in ("FARM_URL", "FARM_TOKEN", "FARM_API_URL", "FARM_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(FarmError) as missing:
        Farm.from_env()
    assert "FARM_URL and FARM_TOKEN" in str(missing.value)
    monkeypatch.setenv("FARM_URL", "http://farm.example:8000/")
    monkeypatch.setenv("FARM_API_TOKEN", "farm_abc")  # the CLI's name works too
    with Farm.from_env(timeout=5) as farm:
        assert farm.base_url == "http://farm.example:8000" and farm.timeout == 5
        assert farm.session.headers["Authorization"] == "Bearer farm_abc"


def test_event_stream_parsing_and_typing():
    text = ("retry: 3000\n\n: keep-alive\n\nevent: status\nid: 0\ndata: {\"status\": \"running\", \"attempt\": 1, "
            "\"worker\": \"w1\", \"error\": null}\n\nevent: output\nid: 1\ndata: {\"id\": \"o\", \"job\": \"j\",\n"
            "data: \"index\": 0, \"width\": 64, \"height\": 64, \"url\": \"/u\", \"lineage_url\": \"/l\"}\n\n"
            "event: end\ndata: {\"reason\": \"timeout\"}\n\n")
    events = list(parse_sse(text.splitlines()))
    assert [(name, event_id) for name, event_id, _ in events] == [("status", "0"), ("output", "1"), ("end", "1")]
    output = typed_event("job", "output", json.loads(events[1][2]))  # data lines joined by a newline
    assert isinstance(output, schemas.OutputEvent) and output.width == 64
    assert typed_event("job", "end", {"reason": "timeout"}).status is None

    progress = {"jobs": 2, "images": 2, "counts": {"queued": 2}, "percent": 0, "images_per_minute": 0, "eta_s": None}
    assert isinstance(typed_event("campaign", "progress", progress), schemas.CampaignProgressEvent)
    one_job = typed_event("campaign", "progress", {"step": 1, "total": 4, "eta_s": 2.0, "job": "j"})
    assert isinstance(one_job, schemas.JobProgressEvent) and one_job.job == "j"
    assert isinstance(typed_event("campaign", "status", {"status": "paused"}), schemas.CampaignStatusEvent)
    placed = typed_event("campaign", "job", {"job": "j", "status": "assigned", "worker": "w1", "attempt": 1})
    assert isinstance(placed, schemas.CampaignJobEvent) and placed.worker == "w1"
    assert typed_event("job", "something-new", {}) is None


def test_campaign_files_say_what_is_wrong(tmp_path):
    good = tmp_path / "c.yml"
    good.write_text("name: boats\nbase: {prompt: a boat}\nmatrix: {seed: [1, 2]}\n")
    assert load_campaign_file(good) == {"name": "boats", "base": {"prompt": "a boat"}, "matrix": {"seed": [1, 2]}}
    cases = {"c.json": ("{not json", "is not JSON"), "c.yaml": ("name: [unclosed", "is not YAML"),
             "rows.csv": ("prompt\na boat\n", "pass it as the rows"), "list.json": ("[1, 2]", "must hold one object")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InvalidRequest) as bad:
            load_campaign_file(tmp_path / name)
        assert message in str(bad.value) and str(tmp_path / name) in str(bad.value)


class _Streams(http.server.BaseHTTPRequestHandler):
    """A job's event stream in two parts: the first ends with the server's
    timeout (as after FARM_SSE_MAX_S), the second, asked for with
    Last-Event-ID, carries the output and the final end."""

    asked: list[str | None] = []
    DEFAULT_PARTS = PARTS = [
        'event: status\nid: 0\ndata: {"status": "running", "attempt": 1, "worker": "w", "error": null}\n\n'
        'event: end\nid: 0\ndata: {"reason": "timeout"}\n\n',
        'event: output\nid: 1\ndata: {"id": "o", "job": "j", "index": 0, "width": 8, "height": 8, "url": "/u", '
        '"lineage_url": "/l"}\n\nevent: end\nid: 1\ndata: {"reason": "final", "status": "succeeded"}\n\n',
    ]

    def do_GET(self) -> None:
        type(self).asked.append(self.headers.get("Last-Event-ID"))
        body = self.PARTS[min(len(self.asked), 2) - 1].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_an_event_stream_the_server_ended_early_is_resumed_from_the_last_id():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Streams)
    _Streams.asked, _Streams.PARTS = [], list(_Streams.DEFAULT_PARTS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Farm(f"http://127.0.0.1:{server.server_port}", "t") as farm:
            events = list(farm.events("j"))
            assert [type(event).__name__ for event in events] == ["JobStatusEvent", "OutputEvent", "EndEvent"]
            assert _Streams.asked == [None, "0"] and events[-1].reason == "final"
            _Streams.asked = []
            once = list(farm.events("j", resume=False))
            assert once[-1].reason == "timeout" and _Streams.asked == [None]
            _Streams.PARTS = ["retry: 3000\n\n"] * 2  # closed with no event: an error, not a silent end
            with pytest.raises(Unreachable, match="closed before its end"):
                list(farm.events("j"))
    finally:
        server.shutdown()
        server.server_close()
