"""Image-to-image jobs on a worker: prepare the source for the mode, then render.

- vary: the source resized to the output size, re-noised by the strength;
- upscale: the source enlarged with Lanczos, then refined at a low strength;
  beyond ``tile_pixels`` it is refined tile by tile (overlapping tiles,
  blended with linear ramps where they overlap), so a 2x upscale of a large
  image never needs more memory than one tile;
- inpaint: the source and its mask (white = repaint);
- outpaint: the canvas grown in the asked directions, the new area filled by
  repeating the edge pixels, and a mask over it that reaches a few pixels into
  the source so the seam is repainted too;
- edit: the source resized to the output size, handed whole to the editing
  family's pipeline (which conditions on it at its own resolution); never tiled.

Every render goes through ``pipelines.render`` with the job's sampler, seed
and progress callback.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import PIL.Image

from farm.generation.image_tasks import OUTPAINT_OVERLAP_PX, outpaint_pads
from farm.workers.pipelines import ImageInputs, RenderParams, render

logger = logging.getLogger(__name__)

#: Tiles overlap by this fraction of their side.
TILE_OVERLAP = 0.125


def prepare_inputs(task: dict, source: PIL.Image.Image, mask: PIL.Image.Image | None, width: int, height: int,
                   multiple: int) -> ImageInputs:
    """The image (and mask) the pipeline gets for ``task`` at the output size."""
    source = source.convert("RGB")
    strength = float(task["strength"])
    mode = task["mode"]
    if mode == "outpaint":
        left, right, top, bottom = outpaint_pads(source.width, source.height, tuple(task["outpaint"]), multiple)
        pixels = np.asarray(source)
        canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
        grown = np.full(canvas.shape[:2], 255, dtype=np.uint8)
        inner = OUTPAINT_OVERLAP_PX
        y0, y1 = top + (inner if top else 0), top + source.height - (inner if bottom else 0)
        x0, x1 = left + (inner if left else 0), left + source.width - (inner if right else 0)
        grown[y0:y1, x0:x1] = 0
        image, mask_image = PIL.Image.fromarray(canvas), PIL.Image.fromarray(grown, mode="L")
        assert image.size == (width, height), (image.size, width, height)
        return ImageInputs(image=image, strength=strength, mask=mask_image)
    resized = source if source.size == (width, height) else source.resize((width, height), PIL.Image.LANCZOS)
    if mode == "inpaint":
        assert mask is not None
        mask = mask.convert("L")
        mask = mask if mask.size == (width, height) else mask.resize((width, height), PIL.Image.NEAREST)
        return ImageInputs(image=resized, strength=strength, mask=mask)
    return ImageInputs(image=resized, strength=strength, edit=mode == "edit")


def tile_grid(width: int, height: int, tile_pixels: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) covering the image, each at most ``tile_pixels``, overlapping."""
    if width * height <= tile_pixels:
        return [(0, 0, width, height)]
    side = max(multiple, int(math.sqrt(tile_pixels)) // multiple * multiple)
    tile_w, tile_h = min(side, width), min(side, height)

    def starts(total: int, tile: int) -> list[int]:
        if tile >= total:
            return [0]
        step = max(multiple, int(tile * (1 - TILE_OVERLAP)) // multiple * multiple)
        positions = list(range(0, total - tile, step)) + [total - tile]
        return sorted(set(positions))

    return [(x, y, x + tile_w, y + tile_h) for y in starts(height, tile_h) for x in starts(width, tile_w)]


def _ramp(length: int, fade_start: bool, fade_end: bool, fade: int) -> np.ndarray:
    weights = np.ones(length, dtype=np.float64)
    ramp = (np.arange(fade) + 1) / (fade + 1)
    if fade_start:
        weights[:fade] = np.minimum(weights[:fade], ramp)
    if fade_end:
        weights[length - fade:] = np.minimum(weights[length - fade:], ramp[::-1])
    return weights


def render_task(pipe, params: RenderParams, inputs: ImageInputs, *, tile_pixels: int, multiple: int,
                on_step: Callable[[int, int], None] | None = None, on_latents=None) -> PIL.Image.Image:
    """One image of an image-to-image job; tiled when the output is larger than ``tile_pixels``."""
    # Only re-noising modes refine tile by tile; inpainting needs the whole
    # mask, an edit the whole source.
    boxes = tile_grid(params.width, params.height, tile_pixels, multiple) if inputs.kind == "img2img" else \
        [(0, 0, params.width, params.height)]
    if len(boxes) == 1:
        (image,) = render(pipe, params, on_step=on_step, inputs=inputs, on_latents=on_latents)
        return image
    logger.info("refining %dx%d in %d tiles", params.width, params.height, len(boxes))
    total = np.zeros((params.height, params.width, 3), dtype=np.float64)
    weight = np.zeros((params.height, params.width, 1), dtype=np.float64)
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        tile_params = RenderParams(**{**params.__dict__, "width": x1 - x0, "height": y1 - y0,
                                      "seed": (params.seed + index) % 2**64, "num_images": 1, "same_seed": False})
        tile_inputs = ImageInputs(image=inputs.image.crop((x0, y0, x1, y1)), strength=inputs.strength)
        step = None if on_step is None else (lambda done, n, i=index: on_step(i * n + done, len(boxes) * n))
        (tile,) = render(pipe, tile_params, on_step=step, inputs=tile_inputs)
        fade = max(1, int((x1 - x0) * TILE_OVERLAP))
        wx = _ramp(x1 - x0, x0 > 0, x1 < params.width, fade)
        wy = _ramp(y1 - y0, y0 > 0, y1 < params.height, fade)
        w = (wy[:, None] * wx[None, :])[:, :, None]
        total[y0:y1, x0:x1] += np.asarray(tile.convert("RGB"), dtype=np.float64) * w
        weight[y0:y1, x0:x1] += w
    return PIL.Image.fromarray(np.clip(np.rint(total / weight), 0, 255).astype(np.uint8))
