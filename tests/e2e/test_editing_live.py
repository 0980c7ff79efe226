"""End to end: Qwen-Image renders from text, FLUX.1 Kontext edits that output
(parent_output) and Qwen-Image-Edit edits an upload, on a real worker process
behind the api and the scheduler (Postgres, Redis, S3); the tiny models are
written by `farm models tiny --family ...`, and each lineage names its parent."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e

FAMILIES = {"tiny-qwen": "qwen_image", "tiny-kontext": "flux_kontext", "tiny-qedit": "qwen_image_edit"}


@pytest.fixture(scope="module")
def editing_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing-models")
    for model_id, family in FAMILIES.items():
        done = subprocess.run([sys.executable, "-m", "farm", "models", "tiny", str(root / model_id), "--family", family],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert f"tiny random-weight {family}" in done.stdout
    return {model_id: root / model_id for model_id in FAMILIES}


def _png(width: int, height: int) -> bytes:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    rgb = np.stack([x, 255 - x, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _submit(client: Client, **body) -> str:
    # A generous timeout: the api imports diffusers on its first request check
    # (the sampler lookup), which takes long on a busy 2-core machine.
    response = client.session.post(f"{client.base}/api/v1/jobs", json=body, timeout=300)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_text_to_image_then_two_edits_with_their_parents_in_the_lineage(tmp_path, s3, redis_url, editing_models):
    ids = list(FAMILIES)
    with running_cluster(tmp_path, s3, redis_url, editing_models, {"w1": ids}) as cluster:
        client = Client(cluster, cluster.token)
        base = client.wait_final(_submit(client, prompt="a lighthouse at dawn", negative_prompt="fog", model="tiny-qwen",
                                               width=80, height=64, steps=2, seed=1), timeout=300)
        assert base["status"] == "succeeded", base["error"]
        parent_id = base["outputs"][0]["id"]

        edited = client.wait_final(_submit(client, prompt="make it night", model="tiny-kontext", image_mode="edit",
                                                 parent_output=parent_id, steps=2, seed=2), timeout=300)
        assert edited["status"] == "succeeded", edited["error"]
        lineage = client.get(f"/api/v1/outputs/{edited['outputs'][0]['id']}").json()
        assert lineage["parent_output"] == parent_id and lineage["model"]["family"] == "flux_kontext"
        assert lineage["params"]["image_task"]["mode"] == "edit"
        assert (lineage["params"]["width"], lineage["params"]["height"]) == (80, 64)

        answer = client.session.post(f"{client.base}/api/v1/uploads", data=_png(96, 64),
                                     headers={"Content-Type": "image/png"}, timeout=30)
        assert answer.status_code == 201, answer.text
        upload_id = answer.json()["id"]
        from_upload = client.wait_final(_submit(client, prompt="add a red boat", model="tiny-qedit", image_mode="edit",
                                                      image=upload_id, steps=2, seed=3), timeout=300)
        assert from_upload["status"] == "succeeded", from_upload["error"]
        lineage = client.get(f"/api/v1/outputs/{from_upload['outputs'][0]['id']}").json()
        assert lineage["source_upload"] == upload_id and lineage["parent_output"] is None
        image = Image.open(io.BytesIO(client.get(f"/api/v1/outputs/{from_upload['outputs'][0]['id']}/image").content))
        assert image.size == (96, 64)

        # A family that cannot edit is refused up front, naming the field and the families that can.
        refused = client.session.post(f"{client.base}/api/v1/jobs", json={
            "prompt": "make it night", "model": "tiny-qwen", "image_mode": "edit", "parent_output": parent_id}, timeout=300)
        assert refused.status_code == 422
        details = refused.json()["error"]["details"]
        assert details[0]["field"] == "image_mode" and "flux_kontext, qwen_image_edit" in details[0]["message"]
