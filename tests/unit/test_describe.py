"""POST /api/v1/describe on a real app (SQLite, local store) with a worker runtime
in-process holding a tiny random-weight BLIP captioner: the real transformers
path, ownership like other image inputs, and a clear answer when no worker
offers describe (503) or none answers in time (504)."""

from __future__ import annotations

import io
import threading

import pytest
import torch
from PIL import Image

from farm import states
from farm.api import create_app
from farm.api.describe import set_sender
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Output, Worker
from farm.registry import add_model
from farm.services import jobs as job_service
from farm.workers import render as render_module
from farm.workers.describe import describe_image, load_describer, write_tiny_describer
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model


@pytest.fixture(scope="module")
def tiny_describer(tmp_path_factory):
    return write_tiny_describer(tmp_path_factory.mktemp("describe") / "tiny-describe", seed=0)


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def worker_sender(ctx, runtime):
    """What the Celery task does, on a thread: describe and post the answer."""

    def send(request_id: str, object_key: str, expires_s: float) -> None:
        threading.Thread(target=lambda: ctx.events.post_reply(request_id, runtime.describe(object_key))).start()

    return send


@pytest.fixture()
def farm(sqlite_settings, tiny_describer):
    # No heartbeat thread runs here: the registration must stay fresh through a slow render.
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_describe_model": str(tiny_describer),
                                                  "heartbeat_timeout_s": 3600.0})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        owner, ana = create_user(session, "ana", password="ana password 1")
        _, eve = create_user(session, "eve")
    runtime = WorkerRuntime(ctx, name="w-describe")
    runtime.register()
    app = create_app(settings, context=ctx)
    set_sender(app, worker_sender(ctx, runtime))
    app.owner = owner  # ana's row, for submitting a job through the service
    return ctx, app, runtime, ana, eve


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def upload(client, token, color=(200, 30, 30)) -> str:
    answer = client.post("/api/v1/uploads", data=png(color), headers={**auth(token), "Content-Type": "image/png"})
    assert answer.status_code == 201
    return answer.get_json()["id"]


def test_tiny_describer_runs_the_transformers_path_deterministically(tiny_describer):
    describer = load_describer(tiny_describer, torch.device("cpu"))
    assert type(describer.model).__name__ == "BlipForConditionalGeneration"
    image = Image.new("RGB", (64, 48), (10, 120, 200))
    text = describe_image(describer, image)
    assert isinstance(text, str) and text.strip() and text == describe_image(describer, image)


def test_an_upload_is_described_by_the_worker(farm):
    _, app, _, ana, _ = farm
    client = app.test_client()
    image = upload(client, ana)
    first = client.post("/api/v1/describe", json={"upload": image}, headers=auth(ana))
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert body["prompt"].strip() and body["model"] == "tiny-describe" and body["worker"] == "w-describe"
    assert client.post("/api/v1/describe", json={"upload": image}, headers=auth(ana)).get_json() == body


def test_an_output_is_described_and_ownership_is_checked(farm, tmp_path):
    ctx, app, runtime, ana, eve = farm
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sd", str(write_tiny_model(tmp_path / "sd", family="sd", seed=0)))
    client = app.test_client()
    job = job_service.submit_job(ctx, app.owner, {"prompt": "a boat", "model": "tiny-sd", "width": 64, "height": 64,
                                              "steps": 1, "seed": 3})
    with ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, runtime.name, 30)
    assert render_module.execute_job(runtime, job.id, 1) == "succeeded"
    output_id = client.get(f"/api/v1/jobs/{job.id}", headers=auth(ana)).get_json()["outputs"][0]["id"]
    described = client.post("/api/v1/describe", json={"output": output_id}, headers=auth(ana))
    assert described.status_code == 200 and described.get_json()["prompt"].strip()
    # Another user's output or upload answers like a missing one, naming the field.
    refused = client.post("/api/v1/describe", json={"output": output_id}, headers=auth(eve))
    assert refused.status_code == 422 and refused.get_json()["error"]["details"][0]["field"] == "output"
    image = upload(client, ana)
    refused = client.post("/api/v1/describe", json={"upload": image}, headers=auth(eve))
    assert refused.status_code == 422 and refused.get_json()["error"]["details"][0]["field"] == "upload"


def test_the_image_page_describe_button_fills_the_prompt(farm, tmp_path):
    import re
    from urllib.parse import urlparse

    ctx, app, runtime, ana, _ = farm
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sd", str(write_tiny_model(tmp_path / "sd", family="sd", seed=0)))
    job = job_service.submit_job(ctx, app.owner, {"prompt": "a kite", "model": "tiny-sd", "width": 64, "height": 64,
                                                  "steps": 1, "seed": 4})
    with ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, runtime.name, 30)
    assert render_module.execute_job(runtime, job.id, 1) == "succeeded"
    with ctx.db.session() as session:
        output_id = session.query(Output).filter_by(job_id=job.id).one().id
    client = app.test_client()
    expected = client.post("/api/v1/describe", json={"output": str(output_id)}, headers=auth(ana)).get_json()["prompt"]
    csrf = lambda page: re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # noqa: E731
    login = client.post("/login", data={"name": "ana", "password": "ana password 1",
                                        "csrf_token": csrf(client.get("/login").get_data(as_text=True))})
    assert login.status_code == 302
    page = client.get(f"/images/{output_id}").get_data(as_text=True)
    assert 'id="describe"' in page
    answer = client.post(f"/images/{output_id}/describe", data={"csrf_token": csrf(page)})
    assert answer.status_code == 302 and urlparse(answer.headers["Location"]).path == "/create"
    form = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert f">{expected}</textarea>" in form


def test_bad_requests_name_the_field(farm):
    _, app, _, ana, _ = farm
    client = app.test_client()
    cases = [({}, "upload"), ({"upload": "a" * 64, "output": "b"}, "upload"), ({"upload": "nope"}, "upload"),
             ({"output": "not-a-uuid"}, "output"), ({"upload": "a" * 64, "colour": 1}, "colour"), ({"upload": 5}, "upload")]
    for body, field in cases:
        answer = client.post("/api/v1/describe", json=body, headers=auth(ana))
        assert answer.status_code == 422, body
        assert field in [d["field"] for d in answer.get_json()["error"]["details"]], (body, answer.get_json())
    assert client.post("/api/v1/describe", json={"upload": "a" * 64}).status_code == 401


def test_no_describe_worker_is_a_503_and_no_answer_a_504(farm):
    ctx, app, runtime, ana, _ = farm
    client = app.test_client()
    image = upload(client, ana)
    with ctx.db.transaction() as session:
        session.get(Worker, runtime.name).draining = True
    answer = client.post("/api/v1/describe", json={"upload": image}, headers=auth(ana))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "30"
    assert "FARM_WORKER_DESCRIBE_MODEL" in answer.get_json()["error"]["message"]
    with ctx.db.transaction() as session:
        session.get(Worker, runtime.name).draining = False
    ctx.settings = ctx.settings.model_copy(update={"describe_wait_s": 0.2})
    set_sender(app, lambda request_id, key, expires_s: None)  # sent, never answered
    answer = client.post("/api/v1/describe", json={"upload": image}, headers=auth(ana))
    assert answer.status_code == 504 and "FARM_DESCRIBE_WAIT_S" in answer.get_json()["error"]["message"]


def test_a_worker_that_cannot_describe_says_why(farm, tmp_path):
    ctx, app, runtime, ana, _ = farm
    runtime.describe_folder = tmp_path / "empty"
    client = app.test_client()
    answer = client.post("/api/v1/describe", json={"upload": upload(client, ana)}, headers=auth(ana))
    assert answer.status_code == 503 and "has no config.json" in answer.get_json()["error"]["message"]


def test_the_openapi_document_declares_describe(farm):
    _, app, _, _, _ = farm
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    operation = document["paths"]["/api/v1/describe"]["post"]
    assert {"200", "422", "503", "504"} <= set(operation["responses"])
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/DescribeRequest")


def test_embedded_replies_cross_processes_as_files(tmp_path):
    # farm up: the worker is another process sharing FARM_HOME/live with the API.
    worker_side, api_side = LocalEvents(live_dir=tmp_path / "live"), LocalEvents(live_dir=tmp_path / "live")
    assert api_side.wait_reply("r1", 0.05) is None
    threading.Timer(0.1, lambda: worker_side.post_reply("r1", {"prompt": "a cat"})).start()
    assert api_side.wait_reply("r1", 10) == {"prompt": "a cat"}
    assert api_side.wait_reply("r1", 0.05) is None  # taken once
    assert not list((tmp_path / "live").glob("*reply*"))
