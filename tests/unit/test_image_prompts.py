"""Image prompts: reference images through the family's IP-Adapter, via the API and the worker."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.registry import add_model
from farm.services import jobs as job_service
from farm.services.uploads import store_upload
from farm.spec import RequestError
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_ip_adapter, write_tiny_model
from tests.support.worker_jobs import submit_and_execute


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip")
    return {"sd": write_tiny_model(root / "sd", family="sd"), "sdxl": write_tiny_model(root / "sdxl", family="sdxl"),
            "flux": write_tiny_model(root / "flux", family="flux"), "sd3": write_tiny_model(root / "sd3", family="sd3"),
            "ip-sd": write_tiny_ip_adapter(root / "ip-sd", family="sd"),
            "ip-sdxl": write_tiny_ip_adapter(root / "ip-sdxl", family="sdxl"),
            "ip-flux": write_tiny_ip_adapter(root / "ip-flux", family="flux")}


@pytest.fixture()
def farm(sqlite_settings, files):
    settings = sqlite_settings.model_copy(update={
        "device": "cpu", "worker_vram_gb": 4.0,
        "ip_adapters": {family: str(files[f"ip-{family}"]) for family in ("sd", "sdxl", "flux")}})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        for family in ("sd", "sdxl", "flux", "sd3"):
            add_model(session, f"tiny-{family}", str(files[family]))
        user, _ = create_user(session, "ana")
        other, _ = create_user(session, "eve")
    return ctx, user, other, WorkerRuntime(ctx, name="w1")


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format="PNG")
    return buf.getvalue()


def run(farm, request) -> tuple[dict, bytes]:
    ctx, user, _, runtime = farm
    _, output, data = submit_and_execute(ctx, user, runtime, request)
    return output.lineage, data


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_image_prompts_steer_the_render_and_are_recorded(farm, family):
    ctx, user, _, _ = farm
    red, blue = store_upload(ctx, user, png("red")).id, store_upload(ctx, user, png("blue")).id
    base = {"prompt": "a cat", "model": f"tiny-{family}", "width": 64, "height": 64, "steps": 2, "seed": 7}
    _, plain = run(farm, base)
    lineage, with_red = run(farm, {**base, "image_prompts": [{"image": red}], "image_prompt_weight": 1.0})
    _, with_blue = run(farm, {**base, "image_prompts": [{"image": blue}], "image_prompt_weight": 1.0})
    _, both = run(farm, {**base, "image_prompts": [{"image": red}, {"image": blue}]})
    assert len({plain, with_red, with_blue, both}) == 4
    recorded = lineage["params"]["image_prompts"]
    assert recorded["weight"] == 1.0 and [i["upload"] for i in recorded["images"]] == [red]
    # The adapter is unloaded after the job: a plain job renders as before.
    _, again = run(farm, base)
    assert again == plain


def test_an_output_can_be_the_image_prompt(farm):
    ctx, user, other, _ = farm
    first, _ = run(farm, {"prompt": "a red door", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2})
    lineage, _ = run(farm, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2,
                            "image_prompts": [{"parent_output": first["output_id"]}]})
    assert lineage["params"]["image_prompts"]["images"][0]["parent_output"] == first["output_id"]
    with pytest.raises(RequestError, match="no output"):
        job_service.submit_job(ctx, other, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64,
                                            "image_prompts": [{"parent_output": first["output_id"]}]})


def test_image_prompt_mistakes_are_refused(farm):
    ctx, user, _, _ = farm
    red = store_upload(ctx, user, png("red")).id

    def refused(**fields):
        with pytest.raises(RequestError) as caught:
            job_service.submit_job(ctx, user, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, **fields})
        return str(caught.value)

    assert "need an IP-Adapter for sd3 models; this farm has one for: flux, sd, sdxl" in refused(
        model="tiny-sd3", image_prompts=[{"image": red}])
    assert "one of them" in refused(image_prompts=[{"image": red, "parent_output": str(uuid.uuid4())}])
    assert "one of them" in refused(image_prompts=[{}])
    assert "no upload" in refused(image_prompts=[{"image": "f" * 64}])
    assert "at most 4" in refused(image_prompts=[{"image": red}] * 5)
    assert "less than or equal to 2" in refused(image_prompts=[{"image": red}], image_prompt_weight=3)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_an_adapter_loaded_for_a_variation_is_gone_for_the_next_plain_render(farm, family):
    ctx, user, _, _ = farm
    red = store_upload(ctx, user, png("red")).id
    base = {"prompt": "a cat", "model": f"tiny-{family}", "width": 64, "height": 64, "steps": 2, "seed": 7}
    first, plain = run(farm, base)
    vary = {"prompt": "a cat", "model": f"tiny-{family}", "image_mode": "vary_subtle", "parent_output": first["output_id"],
            "steps": 4, "seed": 3}
    _, varied = run(farm, vary)
    lineage, steered = run(farm, {**vary, "image_prompts": [{"image": red}], "image_prompt_weight": 1.0})
    assert steered != varied and lineage["parent_output"] == first["output_id"]
    _, again = run(farm, base)
    assert again == plain
