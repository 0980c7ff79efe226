"""A quantized variant through a real farm (issue 22): one worker holds the
tiny fp32 FLUX and its torchao int8 variant; the same request renders on
each, the lineage records the variant and its quantization, the images differ
but are both valid, and the worker reports less memory for the variant."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flux_and_int8(tmp_path_factory):
    from farm.workers.quantize import quantize_folder
    from farm.workers.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("quantized")
    flux = write_tiny_model(root / "flux", family="flux", seed=0)
    quantize_folder(flux, root / "flux-int8", "int8", "flux")  # registered below as a prequantized folder
    return {"flux": flux, "flux-int8": root / "flux-int8"}


def test_the_int8_variant_renders_on_a_worker_with_its_own_lineage_and_size(tmp_path, s3, redis_url, flux_and_int8):
    with running_cluster(tmp_path, s3, redis_url, flux_and_int8, {"w": ["flux", "flux-int8"]}) as cluster:
        client = Client(cluster, cluster.token)
        request = dict(prompt="a lighthouse at dawn", seed=77, width=64, height=64, steps=2)
        jobs = {model: client.submit(model=model, **request) for model in ("flux", "flux-int8")}
        images, lineages = {}, {}
        for model, job_id in jobs.items():
            job = client.wait_final(job_id)
            assert job["status"] == "succeeded", job
            [output] = job["outputs"]
            image = Image.open(io.BytesIO(client.get(output["url"]).content))
            assert image.format == "PNG" and image.size == (64, 64)
            images[model] = np.asarray(image.convert("RGB"))
            lineages[model] = client.get(output["lineage_url"]).json()

        quantized = lineages["flux-int8"]["model"]
        assert (quantized["id"], quantized["base"], quantized["variant"]) == ("flux-int8", "flux", "int8")
        assert quantized["quantization"]["format"] == "int8" and quantized["quantization"]["library"] == "torchao"
        assert "transformer" in quantized["quantization"]["components"]
        assert "quantization" not in lineages["flux"]["model"]
        assert lineages["flux"]["params"]["seed"] == lineages["flux-int8"]["params"]["seed"] == 77
        # Same request, same seed: the quantized weights make another (valid, non-blank) image.
        assert images["flux-int8"].std() > 0 and not np.array_equal(images["flux"], images["flux-int8"])

        workers = client.get("/api/v1/workers", headers={"Authorization": f"Bearer {cluster.admin_token}"}).json()
        worker = next(w for w in workers.get("workers", workers) if w["id"] == "w")
        held = {m["id"]: m["vram_gb"] for m in worker["loaded_models"]}
        assert held["flux-int8"] < held["flux"]
