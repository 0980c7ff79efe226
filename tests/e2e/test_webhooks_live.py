"""Per-job Standard Webhooks on a real farm: jobs rendered by a worker (or
canceled) are announced by the scheduler's webhook thread to a receiver that
verifies each delivery with the standardwebhooks package."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from farm.localcluster import wait_until
from tests.e2e.conftest import Client, running_cluster
from tests.support.receivers import StandardReceiver

pytestmark = pytest.mark.e2e
SMALL = {"model": "tiny-a", "width": 64, "height": 64, "steps": 2}
CLIENT_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="  # base64 of 32 bytes


def test_jobs_announce_their_end_to_a_standard_webhooks_receiver(tmp_path, s3, redis_url, tiny_models):
    rendered = StandardReceiver(CLIENT_SECRET, fail_first=1)
    canceled = StandardReceiver(CLIENT_SECRET)
    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]},
                         webhook_allow="127.0.0.1", webhook_backoff_s=0.2) as cluster:
        client = Client(cluster, cluster.token)
        # A job with no secret of its own: the answer carries the one farm made.
        answer = client.session.post(f"{client.base}/api/v1/jobs", json={"prompt": "a lighthouse", **SMALL,
                                                                          "webhook": {"url": rendered.url}}, timeout=30)
        assert answer.status_code == 202, answer.text
        job_id, secret = answer.json()["id"], answer.json()["webhook"]["secret"]
        rendered.webhook = Webhook(secret)
        # A long job with the client's secret, canceled at once (queued or running).
        answer = client.session.post(f"{client.base}/api/v1/jobs", json={"prompt": "a storm", **SMALL, "steps": 150,
                                                                          "webhook": {"url": canceled.url, "secret": CLIENT_SECRET}},
                                     timeout=30)
        assert answer.status_code == 202, answer.text
        long = answer.json()
        assert client.session.post(f"{client.base}/api/v1/jobs/{long['id']}/cancel", timeout=30).json()["status"] == "canceled"

        done = client.wait_final(job_id)
        assert done["status"] == "succeeded"
        wait_until(lambda: len(rendered.received) == 2 and canceled.processed, 60, what="both jobs' webhooks")
        # Answered 500 once, sent again under the same id, dropped as a duplicate; every delivery verified.
        assert rendered.rejected == canceled.rejected == 0 and len(set(rendered.ids())) == 1 and len(rendered.dropped) == 1
        [event] = rendered.processed.values()
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
        assert [o["id"] for o in event["data"]["outputs"]] == [o["id"] for o in done["outputs"]]
        [stop] = canceled.processed.values()
        assert stop["type"] == "job.canceled" and stop["data"]["id"] == long["id"]
        view = client.job(job_id)["webhook"]
        assert (view["state"], view["event"], view["attempts"]) == ("delivered", "job.succeeded", 2)
        assert secret not in str(client.job(job_id)) and CLIENT_SECRET not in str(client.job(long["id"]))
    rendered.close()
    canceled.close()
