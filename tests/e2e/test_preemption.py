"""End to end, preemption at step boundaries: a long low-class render on the
only worker holding its model is stopped for an interactive image, which
runs first; the render is checkpointed to S3, continues later, and its image
has the bytes of a render that was never stopped."""

from __future__ import annotations

import datetime as dt

import pytest
from minio import Minio

from farm.localcluster import wait_until
from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e

# 120 steps at 256x256, about 4 s of denoising here: the interactive job is
# submitted at step 3, and the scheduler's pass (every 0.5 s) and the worker's
# next progress write (every 0.1 s) must come well before the last step. The
# earlier 16 steps at 64x64 left about 0.15 s, and a CI run saw the render
# finish before the flag was read.
LONG = dict(prompt="a long campaign render", model="tiny-a", width=256, height=256, steps=120, sampler="dpmpp_2m",
            seed=77, priority=-5)
INTERACTIVE = dict(prompt="an interactive image", model="tiny-a", width=64, height=64, steps=3, priority=5)


def _image(client: Client, job: dict) -> bytes:
    [output] = job["outputs"]
    response = client.get(output["url"])
    assert response.status_code == 200
    return response.content


def _when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_an_interactive_image_preempts_a_long_render_which_finishes_with_the_same_bytes(tmp_path, s3, redis_url,
                                                                                        tiny_models):
    models = {"tiny-a": tiny_models["tiny-a"]}
    # Any predicted finish is "not soon": the tiny renders are short in absolute terms.
    with running_cluster(tmp_path, s3, redis_url, models, {"wa": ["tiny-a"]}, preempt_wait_s=0) as cluster:
        campaign = Client(cluster, cluster.token)
        interactive = Client(cluster, cluster.farm("users", "create", "bob").stdout.strip().splitlines()[-1])

        reference = campaign.wait_final(campaign.submit(**LONG), timeout=600)
        assert reference["status"] == "succeeded" and reference["attempt"] == 1

        long_id = campaign.submit(**LONG)

        def rendering():
            job = campaign.job(long_id)
            return job if job["status"] == "running" and job["progress"]["step"] >= 3 else None

        wait_until(rendering, 300, interval=0.05, what="the long render to be under way")
        quick = interactive.wait_final(interactive.submit(**INTERACTIVE), timeout=300)
        assert quick["status"] == "succeeded" and quick["worker"] == "wa"

        done = campaign.wait_final(long_id, timeout=600)
        assert done["status"] == "succeeded", done
        # It was stopped and continued: a later attempt, not charged as a failure.
        assert done["attempt"] >= 2
        # The interactive image ran while the long render was off its GPU.
        assert _when(quick["started_at"]) < _when(done["started_at"])
        assert _when(quick["finished_at"]) < _when(done["finished_at"])
        assert _image(campaign, done) == _image(campaign, reference)

        # Its checkpoint served and was deleted.
        endpoint = cluster.env["FARM_S3_ENDPOINT"].split("://", 1)[1]
        bucket = Minio(endpoint, cluster.env["FARM_S3_ACCESS_KEY"], cluster.env["FARM_S3_SECRET_KEY"], secure=False)
        names = [o.object_name for o in bucket.list_objects(cluster.env["FARM_S3_BUCKET"], prefix="checkpoints/",
                                                             recursive=True)]
        assert not any(long_id in name for name in names)
