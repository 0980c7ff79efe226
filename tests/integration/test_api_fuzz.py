"""Schemathesis against the live API on Postgres, as an admin and as a member
(issue 18): every operation in the document, positive and negative data,
stateful sequences through the document's links, and zero failures of the
listed checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.settings import Settings
from tests.support.api import served, truncate_all
from tests.support.factories import ensure_model

pytestmark = pytest.mark.integration

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance,negative_data_rejection")
# Examples per operation and phase, and the wall-clock budget of one run: bounded, so the tier stays fast.
MAX_EXAMPLES = int(os.environ.get("FARM_FUZZ_EXAMPLES", "12"))
MAX_TIME_S = int(os.environ.get("FARM_FUZZ_MAX_TIME_S", "200"))
ARTIFACTS = Path(os.environ.get("FARM_TEST_ARTIFACTS", "test-artifacts")) / "fuzz"
# Adapter operations that wait for their render: with no worker here, a
# request that passes every check waits FARM_ADAPTER_WAIT_S and gets the
# documented 504 naming its job; anything else 5xx still fails the run.
SYNCHRONOUS_RENDERS = """
[[operations]]
include-path-regex = "^/(sdapi/v1/(txt2img|img2img)|v1/images/(generations|edits|variations)|v1/generation/(text-to-image|image-upscale-vary|image-inpaint-outpaint|image-prompt))$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]
"""


@pytest.fixture()
def live_api(tmp_path, migrated_postgres_url):
    # Event streams of jobs that stay queued end after a second (FARM_SSE_MAX_S);
    # so do the adapters' synchronous renders (FARM_ADAPTER_WAIT_S, answered 504).
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, api_threads=8, sse_max_s=1, sse_poll_s=0.2,
                        adapter_wait_s=1)
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.engine.begin() as conn:
        # Ids far from the small integers a fuzzer tries first, so a DELETE /tokens/1
        # does not revoke the very tokens the run authenticates with.
        for sequence in ("api_tokens_id_seq", "users_id_seq", "teams_id_seq"):
            conn.execute(text(f"SELECT setval('{sequence}', GREATEST((SELECT last_value FROM {sequence}), 1500000000))"))
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        _, admin_token = create_user(session, f"fuzz-admin-{uuid.uuid4().hex[:6]}", admin=True)
        member, member_token = create_user(session, f"fuzz-member-{uuid.uuid4().hex[:6]}", team=f"fuzz-{uuid.uuid4().hex[:6]}")
    known = seed_finished_job(ctx, member)
    app = create_app(settings, context=ctx)
    campaign = app.test_client().post("/api/v1/campaigns", headers={"Authorization": f"Bearer {member_token}"}, json={
        "name": "fuzzed", "base": {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}, "matrix": {"seed": [1, 2]}})
    known["campaign_id"] = campaign.get_json()["id"]
    with served(app, threads=8) as base:
        yield base, {"admin": admin_token, "member": member_token}, known
    truncate_all(ctx)
    ctx.db.dispose()


def seed_finished_job(ctx, member) -> dict[str, str | int]:
    """A worker and a finished job of the member's with its image in the store: ids the
    fuzzer is given (a random UUID never names a real output)."""
    import io

    from PIL import Image

    from farm import states
    from farm.models import Job, Output, Worker

    with ctx.db.transaction() as session:
        session.add(Worker(id="gpu0", host="h", queue="q", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=10**7))
        job = Job(id=uuid.uuid4(), user_id=member.id, model_id="m-sd", request={"prompt": "p"},
                  params={"prompt": "p", "seed": 1, "num_images": 1}, width=64, height=64, steps=2, num_images=1, seed=1)
        session.add(job)
    with ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, "gpu0", 30)
        states.start_job(session, job.id, 1, "gpu0", 30)
        states.complete_job(session, job.id, 1, "gpu0")
        png = io.BytesIO()
        Image.new("RGB", (64, 64), "teal").save(png, format="PNG")
        key = f"outputs/u{member.id}/{job.id}/a1/0.png"
        ctx.storage.put(key, png.getvalue(), "image/png")
        output = Output(job_id=job.id, user_id=member.id, attempt=1, index=0, object_key=key, sidecar_key=key + ".json",
                        content_type="image/png", content_sha256="00", byte_size=len(png.getvalue()), width=64, height=64,
                        seed=1, lineage={"prompt": "p"})
        session.add(output)
        session.flush()
        return {"output_id": str(output.id), "worker_id": "gpu0", "team_id": member.team_id}


def test_schemathesis_finds_no_failure_as_admin_or_member(live_api):
    """Both roles at once, as a shared farm sees them: each run's own report and log land in test-artifacts/fuzz."""
    base, tokens, known = live_api
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = ARTIFACTS / "schemathesis.toml"
    # Ids of real rows for the path parameters that nothing in the document creates reliably.
    config.write_text("[parameters]\n" + "".join(f'"path.{name}" = {json.dumps(value)}\n' for name, value in known.items())
                      + SYNCHRONOUS_RENDERS)
    runs = {}
    for role in ("admin", "member"):
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base}/api/v1/openapi.json",
            "--checks", CHECKS, "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S), "--seed", "18",
            "--header", f"Authorization: Bearer {tokens[role]}", "--request-timeout", "60",
            "--continue-on-failure", "--no-color", "--report", "junit",
            "--report-junit-path", str(ARTIFACTS / f"{role}.junit.xml"),
        ]
        log = (ARTIFACTS / f"{role}.log").open("w")
        runs[role] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True), log)
    for role, (process, log) in runs.items():
        try:
            process.wait(timeout=MAX_TIME_S + 240)
        finally:
            process.kill()
            log.close()
    for role, (process, _) in runs.items():
        output = (ARTIFACTS / f"{role}.log").read_text()
        assert process.returncode == 0, f"{role}:\n{output[-12000:]}"
        # Every operation of the document was tested and every generated case passed.
        selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", output).groups())
        tested = int(re.search(r"Tested: (\d+)", output).group(1))
        assert selected == total == tested >= 30, output[-3000:]
        generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", output).groups())
        assert generated == passed > 1000, output[-3000:]
