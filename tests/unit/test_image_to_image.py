"""Image to image through the API and the worker's job path: vary, upscale
(tiled), inpaint, outpaint, from a parent output or an upload, with the
parent in the lineage."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, Output
from farm.registry import add_model
from farm.workers import render as render_module
from farm.workers.img2img import tile_grid
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2i")
    return {family: write_tiny_model(root / family, family=family) for family in ("sd", "sdxl", "flux", "sd3")}


@pytest.fixture()
def farm(sqlite_settings, tiny_dirs):
    # Upscales above 64x64 are refined in tiles here, so the tiled path runs on tiny images.
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0, "upscale_tile_pixels": 64 * 64})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        for family, path in tiny_dirs.items():
            add_model(session, f"tiny-{family}", str(path))
        _, token = create_user(session, "ana")
        _, other = create_user(session, "eve")
    client = create_app(settings, context=ctx).test_client()
    return ctx, client, token, other, WorkerRuntime(ctx, name="w1")


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def submit_and_run(farm, body: dict) -> dict:
    ctx, client, token, _, runtime = farm
    answer = client.post("/api/v1/jobs", json=body, headers=auth(token))
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    with ctx.db.transaction() as session:
        states.assign_job(session, uuid.UUID(job_id), 1, "w1", 30)
    outcome = render_module.execute_job(runtime, uuid.UUID(job_id), 1)
    view = client.get(f"/api/v1/jobs/{job_id}", headers=auth(token)).get_json()
    assert outcome == "succeeded", view
    return view


def image_of(farm, output_id: str) -> Image.Image:
    ctx = farm[0]
    with ctx.db.session() as session:
        key = session.get(Output, uuid.UUID(output_id)).object_key
    return Image.open(io.BytesIO(ctx.storage.get(key)))


def lineage_of(farm, view: dict) -> dict:
    _, client, token, _, _ = farm
    return client.get(view["outputs"][0]["lineage_url"], headers=auth(token)).get_json()


def upload(farm, image: Image.Image, token=None, multipart=False):
    _, client, own, _, _ = farm
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    if multipart:
        return client.post("/api/v1/uploads", data={"file": (io.BytesIO(buf.getvalue()), "x.png")},
                           headers=auth(token or own), content_type="multipart/form-data")
    return client.post("/api/v1/uploads", data=buf.getvalue(), headers={**auth(token or own), "Content-Type": "image/png"})


@pytest.fixture()
def parent(farm):
    return submit_and_run(farm, {"prompt": "a lighthouse at dawn", "model": "tiny-sd", "width": 64, "height": 64,
                                 "steps": 4, "seed": 21})


@pytest.mark.parametrize("mode", ["vary_subtle", "vary_strong"])
def test_vary_a_parent_output_records_the_parent(farm, parent, mode):
    parent_id = parent["outputs"][0]["id"]
    view = submit_and_run(farm, {"prompt": "a lighthouse at dusk", "model": "tiny-sd", "image_mode": mode,
                                 "parent_output": parent_id, "steps": 4, "seed": 3})
    lineage = lineage_of(farm, view)
    assert lineage["parent_output"] == parent_id
    task = lineage["params"]["image_task"]
    assert task["mode"] == mode and task["strength"] == {"vary_subtle": 0.5, "vary_strong": 0.85}[mode]
    assert (lineage["params"]["width"], lineage["params"]["height"]) == (64, 64)
    varied = np.asarray(image_of(farm, view["outputs"][0]["id"]), dtype=np.int16)
    original = np.asarray(image_of(farm, parent_id).convert("RGB"), dtype=np.int16)
    assert varied.shape == original.shape and not np.array_equal(varied, original)


def test_the_strength_sets_how_much_of_the_schedule_is_run(farm, parent):
    # Random weights make pixel distances meaningless; the number of denoising
    # iterations the worker reported is what the strength decides:
    # int(steps x strength), as diffusers' img2img pipelines count them.
    parent_id = parent["outputs"][0]["id"]
    totals = {}
    for mode, denoise in (("vary_subtle", None), ("vary_strong", None), ("vary_subtle", 0.3)):
        body = {"prompt": "a lighthouse at dawn", "model": "tiny-sd", "image_mode": mode, "parent_output": parent_id,
                "steps": 10, "seed": 3}
        if denoise:
            body["denoise"] = denoise
        view = submit_and_run(farm, body)
        totals[(mode, denoise)] = view["progress"]["total"]
    assert totals == {("vary_subtle", None): 5, ("vary_strong", None): 8, ("vary_subtle", 0.3): 3}


def test_upscale_2x_is_refined_in_tiles_and_doubles_the_size(farm, parent):
    parent_id = parent["outputs"][0]["id"]
    ctx, client, token, _, _ = farm
    view = submit_and_run(farm, {"prompt": "a lighthouse", "model": "tiny-sd", "image_mode": "upscale_2x",
                                 "parent_output": parent_id, "steps": 8, "seed": 5})
    image = image_of(farm, view["outputs"][0]["id"])
    assert image.size == (128, 128)
    assert len(tile_grid(128, 128, ctx.settings.upscale_tile_pixels, 8)) > 1
    # The refined image keeps the enlarged source's layout: closer to it than to another seed's image.
    enlarged = np.asarray(image_of(farm, parent_id).convert("RGB").resize((128, 128), Image.LANCZOS), dtype=np.float64)
    other = submit_and_run(farm, {"prompt": "a lighthouse", "model": "tiny-sd", "width": 128, "height": 128, "steps": 4, "seed": 99})
    unrelated = np.asarray(image_of(farm, other["outputs"][0]["id"]), dtype=np.float64)
    refined = np.asarray(image, dtype=np.float64)
    assert np.abs(refined - enlarged).mean() < np.abs(unrelated - enlarged).mean()
    assert lineage_of(farm, view)["params"]["image_task"]["strength"] == 0.382


def test_tile_grid_covers_the_image_with_overlap():
    boxes = tile_grid(200, 120, 64 * 64, 8)
    covered = np.zeros((120, 200), dtype=int)
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0) * (y1 - y0) <= 64 * 64 and x0 % 8 == 0 and y0 % 8 == 0
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and covered.max() >= 2
    assert tile_grid(64, 64, 64 * 64, 8) == [(0, 0, 64, 64)]


def test_inpaint_an_upload_repaints_only_the_masked_part(farm):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    first = upload(farm, source)
    again = upload(farm, source, multipart=True)
    assert first.status_code == 201 and again.get_json()["id"] == first.get_json()["id"]
    mask_id = upload(farm, Image.fromarray(mask, mode="L")).get_json()["id"]
    view = submit_and_run(farm, {"prompt": "a red door", "model": "tiny-sd", "image_mode": "inpaint",
                                 "image": first.get_json()["id"], "mask": mask_id, "steps": 4, "seed": 8})
    lineage = lineage_of(farm, view)
    assert lineage["parent_output"] is None and lineage["source_upload"] == first.get_json()["id"]
    result = np.asarray(image_of(farm, view["outputs"][0]["id"]), dtype=np.int16)
    before = np.asarray(source, dtype=np.int16)
    inside = np.abs(result[20:44, 20:44] - before[20:44, 20:44]).mean()
    outside = np.abs(result[:8, :] - before[:8, :]).mean()
    assert inside > outside


@pytest.mark.parametrize(("family", "directions", "size"), [
    ("sd", None, (96, 96)),
    ("sd", ["right"], (80, 64)),
    ("flux", ["left", "top"], (80, 80)),
])
def test_outpaint_grows_the_canvas(farm, family, directions, size):
    parent_view = submit_and_run(farm, {"prompt": "a field", "model": f"tiny-{family}", "width": 64, "height": 64,
                                        "steps": 2, "seed": 4})
    body = {"prompt": "a wide field", "model": f"tiny-{family}", "image_mode": "outpaint",
            "parent_output": parent_view["outputs"][0]["id"], "steps": 2, "seed": 4}
    if directions:
        body["outpaint"] = directions
    view = submit_and_run(farm, body)
    assert image_of(farm, view["outputs"][0]["id"]).size == size
    assert lineage_of(farm, view)["parent_output"] == parent_view["outputs"][0]["id"]


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_vary_and_upscale_on_every_family(farm, family):
    parent_view = submit_and_run(farm, {"prompt": "a cat", "model": f"tiny-{family}", "width": 64, "height": 64,
                                        "steps": 2, "seed": 1})
    parent_id = parent_view["outputs"][0]["id"]
    vary = submit_and_run(farm, {"prompt": "a cat", "model": f"tiny-{family}", "image_mode": "vary_strong",
                                 "parent_output": parent_id, "steps": 4, "seed": 2})
    up = submit_and_run(farm, {"prompt": "a cat", "model": f"tiny-{family}", "image_mode": "upscale_1.5x",
                               "parent_output": parent_id, "steps": 4, "seed": 2})
    assert image_of(farm, vary["outputs"][0]["id"]).size == (64, 64)
    assert image_of(farm, up["outputs"][0]["id"]).size == (96, 96)


def test_rerender_of_a_derived_image_gives_the_same_bytes(farm, parent):
    ctx, client, token, _, runtime = farm
    view = submit_and_run(farm, {"prompt": "a lighthouse", "model": "tiny-sd", "image_mode": "vary_subtle",
                                 "parent_output": parent["outputs"][0]["id"], "steps": 4, "seed": 6})
    answer = client.post(f"/api/v1/outputs/{view['outputs'][0]['id']}/rerender", headers=auth(token))
    assert answer.status_code == 202
    job_id = answer.get_json()["id"]
    with ctx.db.transaction() as session:
        states.assign_job(session, uuid.UUID(job_id), 1, "w1", 30)
    assert render_module.execute_job(runtime, uuid.UUID(job_id), 1) == "succeeded"
    again = client.get(f"/api/v1/jobs/{job_id}", headers=auth(token)).get_json()
    assert again["rerender_matches"] is True


def test_bad_image_requests_say_what_to_fix(farm, parent):
    ctx, client, token, other, _ = farm
    parent_id = parent["outputs"][0]["id"]

    def problems(body, who=token):
        answer = client.post("/api/v1/jobs", json={"prompt": "x", "model": "tiny-sd", **body}, headers=auth(who))
        assert answer.status_code == 422, answer.get_json()
        return {p["field"]: p["message"] for p in answer.get_json()["error"]["details"]}

    assert "needs a source" in str(problems({"image_mode": "vary_subtle"}))
    assert "only used with image_mode" in str(problems({"parent_output": parent_id}))
    assert "follows from its source" in str(problems({"image_mode": "vary_subtle", "parent_output": parent_id, "width": 64, "height": 64}))
    assert "needs a mask" in str(problems({"image_mode": "inpaint", "parent_output": parent_id}))
    assert "only inpaint takes a mask" in str(problems({"image_mode": "vary_subtle", "parent_output": parent_id, "mask": "0" * 64}))
    assert "no output" in str(problems({"image_mode": "vary_subtle", "parent_output": parent_id}, who=other))
    assert "not an output id" in str(problems({"image_mode": "vary_subtle", "parent_output": "nope"}))
    assert "no upload" in str(problems({"image_mode": "vary_subtle", "image": "a" * 64}))
    assert "not an upload id" in str(problems({"image_mode": "vary_subtle", "image": "../etc/passwd"}))
    mine = upload(farm, Image.new("RGB", (64, 64), "white")).get_json()["id"]
    # Another user's upload id finds nothing under their own name.
    assert "no upload" in str(problems({"image_mode": "vary_subtle", "image": mine}, who=other))
    small_mask = upload(farm, Image.new("L", (32, 32), 255)).get_json()["id"]
    assert "must match" in str(problems({"image_mode": "inpaint", "image": mine, "mask": small_mask}))
    assert "unknown value" in str(problems({"image_mode": "sharpen", "parent_output": parent_id}))
    assert "at least one direction" in str(problems({"image_mode": "outpaint", "parent_output": parent_id, "outpaint": []}))


def test_uploads_refuse_what_is_not_an_image(farm):
    _, client, token, _, _ = farm
    answer = client.post("/api/v1/uploads", data=b"hello", headers={**auth(token), "Content-Type": "image/png"})
    assert answer.status_code == 422 and "not a PNG, JPEG or WebP image" in answer.get_json()["error"]["message"]
    assert client.post("/api/v1/uploads", data=b"", headers=auth(token)).status_code == 400
    assert client.post("/api/v1/uploads", data=b"x").status_code == 401
    too_big = b"\x89PNG" + b"0" * (farm[0].settings.max_upload_bytes + 1)
    assert client.post("/api/v1/uploads", data=too_big, headers=auth(token)).status_code == 413
    # A body over the JSON limit but under the upload limit is accepted on this route.
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    assert len(buf.getvalue()) > farm[0].settings.max_request_bytes
    assert client.post("/api/v1/uploads", data=buf.getvalue(), headers=auth(token)).status_code == 201


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG file whose header declares a huge image (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\0" * (width * 3 + 1) * 8, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_uploads_are_refused_by_their_header_before_any_decoding(farm, monkeypatch):
    import PIL.ImageFile

    _, client, token, _, _ = farm
    decoded = []
    real_load = PIL.ImageFile.ImageFile.load
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    for width, height in ((8192, 8192), (9000, 9000), (5000, 4000)):
        body = png_declaring(width, height)
        assert len(body) < 300_000
        answer = client.post("/api/v1/uploads", data=body, headers={**auth(token), "Content-Type": "image/png"})
        assert answer.status_code == 413, answer.get_json()
        assert f"{width}x{height}" in answer.get_json()["error"]["message"]
        assert "FARM_MAX_UPLOAD_PIXELS" in answer.get_json()["error"]["message"]
    assert decoded == []


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "ICO", "PPM", "TGA"])
def test_only_png_jpeg_and_webp_are_decoded(farm, fmt):
    _, client, token, _, _ = farm
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format=fmt)
    answer = client.post("/api/v1/uploads", data=buf.getvalue(), headers={**auth(token), "Content-Type": "application/octet-stream"})
    assert answer.status_code == 422 and "PNG, JPEG or WebP" in answer.get_json()["error"]["message"]
    for accepted in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), "red").save(buf, format=accepted)
        assert client.post("/api/v1/uploads", data=buf.getvalue(), headers=auth(token)).status_code == 201, accepted


def test_uploads_decoded_at_once_are_bounded(farm, monkeypatch):
    import concurrent.futures
    import threading
    import time

    import PIL.ImageFile
    from sqlalchemy import select

    from farm.models import User
    from farm.services.uploads import store_upload

    ctx = farm[0]
    with ctx.db.session() as session:
        user = session.execute(select(User)).scalars().first()
    busy, most, lock = [0], [0], threading.Lock()
    real_load = PIL.ImageFile.ImageFile.load

    def slow_load(self):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.2)
        try:
            return real_load(self)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", slow_load)
    bodies = []
    for shade in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (shade, 0, 0)).save(buf, format="PNG")
        bodies.append(buf.getvalue())
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        uploads = list(pool.map(lambda body: store_upload(ctx, user, body), bodies))
    assert len({u.id for u in uploads}) == 6
    assert most[0] == ctx.settings.upload_decodes == 2
