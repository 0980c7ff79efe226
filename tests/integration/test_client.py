"""farm.client against a live farm: the api as `farm api` serves it (uvicorn)
on Postgres, Redis and an S3 server, and a worker rendering a tiny model
through the worker's own job path (farm/workers/render.py) in a thread."""

from __future__ import annotations

import io
import json
import queue
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from farm import states
from farm.api import create_app, schemas
from farm.auth import create_user, issue_token
from farm.cli import main as cli
from farm.client import (Conflict, Farm, Forbidden, InvalidRequest, JobFailed, NotFound, QuotaExceeded, Unauthorized,
                         WaitTimeout, parse_sse, preview_image)
from farm.context import build_context
from farm.models import Job
from farm.registry import add_model
from farm.services.quotas import set_quota
from farm.settings import Settings
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from tests.support.api import served_streaming, truncate_all

pytestmark = pytest.mark.integration

SMALL = {"model": "tiny-a", "width": 64, "height": 64, "steps": 2}


class LiveFarm:
    """The farm's parts a test needs: its context, base URL, users' tokens, and
    a worker thread that renders the jobs a test releases (so a test can open a
    stream or start waiting before the work happens) and every job of the
    users named in ``auto``."""

    def __init__(self, ctx, runtime, base: str) -> None:
        self.ctx, self.runtime, self.base = ctx, runtime, base
        self.tokens: dict[str, str] = {}
        self.users: dict[str, object] = {}
        self.auto: set[int] = set()
        self.released: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)

    def client(self, name: str, **kwargs) -> Farm:
        return Farm(self.base, self.tokens[name], **kwargs)

    def release(self, *job_ids) -> None:
        for job_id in job_ids:
            self.released.put(uuid.UUID(str(job_id)))

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                ids = [self.released.get(timeout=0.2)]
            except queue.Empty:
                ids = []
            with self.ctx.db.session() as session:
                if self.auto:
                    ids += list(session.execute(select(Job.id).where(Job.status == "queued", Job.user_id.in_(self.auto))
                                                .order_by(Job.created_at)).scalars())
            for job_id in ids:
                with self.ctx.db.transaction() as session:
                    job = session.get(Job, job_id)
                    if job.status != "queued":
                        continue
                    states.assign_job(session, job.id, job.attempt, self.runtime.name, 60)
                    attempt = job.attempt
                render_module.execute_job(self.runtime, job_id, attempt)


@pytest.fixture(scope="module")
def live(tmp_path_factory, migrated_postgres_url, redis_url, s3, tiny_models):
    home = tmp_path_factory.mktemp("client-farm")
    settings = Settings(home=home, database_url=migrated_postgres_url, broker_url=redis_url, s3_endpoint=s3[0],
                        s3_access_key=s3[1], s3_secret_key=s3[2], s3_bucket=f"farm-client-{uuid.uuid4().hex[:8]}",
                        device="cpu", worker_vram_gb=2, preview_every_steps=2, progress_interval_s=0, sse_poll_s=0.5,
                        sse_max_s=60, webhook_allow="127.0.0.1")
    ctx = build_context(settings)
    with ctx.db.transaction() as session:
        add_model(session, "tiny-a", str(tiny_models["tiny-a"]), family="sd", vram_gb=0.01)
        users = {name: create_user(session, f"{name}-client") for name in ("ana", "eve", "quinn", "cli")}
        read_only = issue_token(session, users["ana"][0], name="viewer", scope="read")
    runtime = WorkerRuntime(ctx, name="w-client")
    runtime.register()
    with served_streaming(create_app(settings, context=ctx), ctx) as base:
        farm = LiveFarm(ctx, runtime, base)
        farm.users = {name: user for name, (user, _) in users.items()}
        farm.tokens = {name: token for name, (_, token) in users.items()} | {"ana-read": read_only}
        farm.auto = {users["cli"][0].id}
        farm.thread.start()
        yield farm
        farm.stop.set()
        farm.thread.join(timeout=60)
    truncate_all(ctx)
    ctx.db.dispose()


def _png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_submit_wait_and_download_a_png_of_the_asked_size(live, tmp_path):
    with live.client("ana") as farm:
        job = farm.submit({"prompt": "a lighthouse", **SMALL}, seed=7, height=96)
        assert isinstance(job, schemas.JobView) and job.status == "queued" and job.params["seed"] == 7
        live.release(job.id)
        done = farm.wait(job.id, timeout=120)
        assert done.status == "succeeded" and len(done.outputs) == 1
        assert _png_size(farm.download(done.outputs[0])) == (64, 96)  # through the store's presigned URL

        saved = farm.download_to(done.outputs[0], tmp_path / "lighthouse")
        assert saved == tmp_path / "lighthouse.png" and _png_size(saved.read_bytes()) == (64, 96)
        assert farm.download_to(done.outputs[0].id, tmp_path).name == f"{done.outputs[0].id}.png"
        record = farm.output(done.outputs[0].id)
        assert record.id == done.outputs[0].id and record.model_extra["job_id"] == job.id

        second = farm.submit(prompt="a second lighthouse", **SMALL)
        live.release(second.id)
        farm.wait(second.id, timeout=120)
        # One job a page: the iterator follows the cursors through both.
        listed = [view.id for view in farm.jobs(status=["succeeded"], page_size=1)]
        assert listed[:2] == [second.id, job.id] and len(listed) == len(set(listed))


def test_submit_hands_back_the_webhook_secret_the_farm_shows_once(live):
    with live.client("ana") as farm:
        generated = farm.submit(prompt="a bell", **SMALL, webhook={"url": "http://127.0.0.1:9/hook"})
        assert generated.webhook_created.url == "http://127.0.0.1:9/hook"
        assert generated.webhook_created.secret.startswith("whsec_")
        assert generated.webhook.url == "http://127.0.0.1:9/hook"  # the job's view: where delivery stands, no secret
        assert "secret" not in farm.job(generated.id).model_dump_json()
        farm.cancel(generated.id)
        plain = farm.submit(prompt="a bell", **SMALL)
        assert plain.webhook_created is None and plain.webhook is None
        farm.cancel(plain.id)


def test_events_stream_progress_previews_the_output_and_the_final_status(live):
    with live.client("ana") as farm:
        job = farm.submit(prompt="a fox", **{**SMALL, "steps": 4})
        stream = farm.events(job.id)
        first = next(stream)  # the stream is open before the work starts
        assert isinstance(first, schemas.JobStatusEvent) and first.status == "queued"
        live.release(job.id)
        events = list(stream)

    kinds = [type(event).__name__ for event in events]
    assert kinds[-1] == "EndEvent" and events[-1].reason == "final" and events[-1].status == "succeeded"
    statuses = [event.status for event in events if isinstance(event, schemas.JobStatusEvent)]
    assert statuses[-1] == "succeeded" and "running" in statuses
    steps = [event.step for event in events if isinstance(event, schemas.JobProgressEvent)]
    assert steps and steps[-1] == 4
    previews = [event for event in events if isinstance(event, schemas.PreviewEvent)]
    assert [p.step for p in previews] == [2, 4]
    assert Image.open(io.BytesIO(preview_image(previews[0]))).format == "JPEG"
    outputs = [event for event in events if isinstance(event, schemas.OutputEvent)]
    assert len(outputs) == 1 and outputs[0].job == job.id
    with live.client("ana") as farm:
        assert _png_size(farm.download(outputs[0])) == (64, 64)

    # The event models say exactly what the farm sends: replaying the final
    # stream, every event's data has the model's fields, no more, no fewer.
    replay = httpx.get(f"{live.base}/api/v1/jobs/{job.id}/events", timeout=30,
                       headers={"Authorization": f"Bearer {live.tokens['ana']}"})
    models = {"status": schemas.JobStatusEvent, "progress": schemas.JobProgressEvent,
              "output": schemas.OutputEvent, "end": schemas.EndEvent}
    replayed = list(parse_sse(replay.text.splitlines()))
    assert [name for name, _, _ in replayed] == ["status", "progress", "output", "end"]
    for name, _, data in replayed:
        only_on_campaigns = {"job"} if name == "progress" else set()
        assert set(json.loads(data)) == set(models[name].model_fields) - only_on_campaigns, name


def test_upload_then_image_to_image(live):
    source = io.BytesIO()
    Image.new("RGB", (64, 96), (200, 40, 40)).save(source, format="PNG")
    with live.client("ana") as farm:
        upload = farm.upload(source.getvalue())
        assert (upload.width, upload.height) == (64, 96)
        job = farm.submit(prompt="a red square, varied", image=upload.id, image_mode="vary_subtle", model="tiny-a",
                          steps=2)
        live.release(job.id)
        done = farm.wait(job.id, timeout=120)
        assert _png_size(farm.download(done.outputs[0])) == (64, 96)  # the source's size
        assert farm.output(done.outputs[0].id).model_extra["source_upload"] == upload.id


def test_campaign_from_a_yaml_file_with_rows_then_followed_to_its_manifest(live, tmp_path):
    spec = tmp_path / "boats.yaml"
    spec.write_text("name: boats\nbase:\n  prompt: a boat\n  model: tiny-a\n  width: 64\n  height: 64\n  steps: 2\n"
                    "matrix:\n  seed: [1, 2]\n")
    rows = tmp_path / "rows.csv"
    rows.write_text("prompt\na red boat\na blue boat\na green boat\n")
    with live.client("ana") as farm:
        priced = farm.submit_campaign(spec, rows=rows, dry_run=True)
        assert priced.id is None and priced.jobs == 6 and priced.cost.images == 6

        submitted = farm.submit_campaign(spec)
        assert submitted.id and submitted.jobs == 2
        assert farm.pause_campaign(submitted.id).status == "paused"
        assert farm.resume_campaign(submitted.id).status == "active"
        job_ids = [view.id for view in farm.campaign_jobs(submitted.id, page_size=1)]
        assert len(set(job_ids)) == 2

        stream = farm.campaign_events(submitted.id)
        assert isinstance(next(stream), schemas.CampaignStatusEvent)
        live.release(*job_ids)
        events = list(stream)
        assert isinstance(events[-1], schemas.EndEvent) and events[-1].status == "completed"
        outputs = {event.id for event in events if isinstance(event, schemas.OutputEvent)}
        assert len(outputs) == 2
        counts = [event.counts for event in events if isinstance(event, schemas.CampaignProgressEvent)]
        assert counts[-1]["succeeded"] == 2

        view = farm.campaign(submitted.id)
        assert view.counts["succeeded"] == 2 and view.percent == 100
        manifest = farm.manifest(submitted.id)
        assert {row["output_id"] for row in manifest} == outputs
        assert "output_id" in farm.manifest_csv(submitted.id).splitlines()[0]


def test_errors_come_as_their_classes_with_what_to_fix(live):
    with live.client("ana") as farm:
        with pytest.raises(InvalidRequest) as shape:  # checked before sending, as the farm would
            farm.submit(prompt="x", steps=0, colour="red")
        assert shape.value.status == 422 and {"steps", "colour"} <= set(shape.value.fields)
        with pytest.raises(InvalidRequest) as refused:  # the farm's own check (the registry)
            farm.submit(prompt="x", model="no-such-model")
        assert refused.value.code == "validation_error" and "model" in refused.value.fields
        assert "HTTP 422" in str(refused.value)

        job = farm.submit(prompt="held back", **SMALL)
        with pytest.raises(WaitTimeout) as late:
            farm.wait(job.id, timeout=0.5)
        assert late.value.job.status == "queued"
        assert farm.cancel(job.id).status == "canceled"
        with pytest.raises(JobFailed) as canceled:
            farm.wait(job.id)
        assert canceled.value.job.status == "canceled" and job.id in str(canceled.value)
        with pytest.raises(Conflict):
            farm.cancel(job.id)
        with pytest.raises(InvalidRequest) as campaign_field:
            farm.submit_campaign({"name": "x", "base": {"prompt": "y"}, "matrix": {"colour": ["red"]}})
        assert "matrix.colour" in campaign_field.value.fields

    ana_job = job.id
    with live.client("eve") as eve:
        for call in (lambda: eve.job(ana_job), lambda: eve.cancel(ana_job), lambda: next(eve.events(ana_job))):
            with pytest.raises(NotFound) as hidden:
                call()
            assert hidden.value.status == 404 and hidden.value.code == "not_found"

    with Farm(live.base, "farm_not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.me()
    with live.client("ana-read") as viewer:
        assert viewer.me().user.name == "ana-client"
        with pytest.raises(Forbidden):
            viewer.submit(prompt="x", **SMALL)

    set_quota(live.ctx, "user", live.users["quinn"].id, {"images_per_day": 0})
    with live.client("quinn") as quinn:
        with pytest.raises(QuotaExceeded) as quota:
            quinn.submit(prompt="x", **SMALL)
        assert quota.value.status == 429 and quota.value.details["limit"] == "images_per_day"
        assert quota.value.retry_after and quota.value.retry_after > 0
        assert quinn.me().quota.user.images_per_day == 0


def test_the_cli_submits_waits_and_downloads_through_the_client(live, tmp_path):
    runner = CliRunner()
    target = ["--api", live.base, "--token", live.tokens["cli"]]
    result = runner.invoke(cli, ["submit", "a harbour", "--model", "tiny-a", "--width", "64", "--height", "64",
                                 "--steps", "2", "--wait", "--out", str(tmp_path), *target])
    assert result.exit_code == 0, result.output
    saved = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(saved) == 1 and _png_size(open(saved[0], "rb").read()) == (64, 64)

    refused = runner.invoke(cli, ["submit", "a harbour", "--model", "no-such-model", *target])
    assert refused.exit_code == 1 and "HTTP 422" in refused.output and "model" in refused.output
    assert "Traceback" not in refused.output

    spec = tmp_path / "c.json"
    spec.write_text(json.dumps({"name": "cli", "base": {"prompt": "y", **SMALL}, "matrix": {"seed": [1, 2, 3]}}))
    priced = runner.invoke(cli, ["campaign", "submit", str(spec), "--dry-run", *target])
    assert priced.exit_code == 0 and priced.output.startswith("3 jobs, 3 images"), priced.output


def test_the_readme_example_runs_as_written(live, tmp_path, monkeypatch):
    """README.md's Python client example, run against this farm (its default
    model is tiny-a) with the files it names in the working directory."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Python client"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64), (20, 90, 200)).save(tmp_path / "photo.png")
    (tmp_path / "boats.json").write_text(json.dumps({"name": "readme", "base": {"prompt": "a boat", **SMALL},
                                                     "matrix": {"seed": [1]}}))
    (tmp_path / "rows.csv").write_text("prompt\na red boat\na blue boat\n")
    namespace = {"token": live.tokens["cli"]}  # the worker thread renders this user's jobs as they come
    exec(compile(code.replace("http://127.0.0.1:8000", live.base), "README.md", "exec"), namespace)
    assert namespace["done"].status == "succeeded" and namespace["varied"].status == "succeeded"
    assert Image.open(tmp_path / "lighthouse-0.png").format == "PNG"
    assert len(namespace["manifest"]) == 2
