"""Image-to-image modes: what each does to its source image, as pure functions.

A request with ``image_mode`` works on a source image (a parent output or an
upload): vary it, upscale it, repaint a masked part, or extend it past its
edges. This module fixes the numbers (denoising strength, scale, how far an
outpaint reaches) and the output size; the worker's pipeline code
(``farm.workers.img2img``) does the rendering.

Strengths follow what people know from Fooocus' menu: a subtle variation keeps
the composition (half the noise schedule), a strong one keeps little more than
the palette, an upscale re-details without moving anything.

An edit is another kind of work: the prompt is an instruction, and an editing
family's pipeline (FLUX.1 Kontext, Qwen-Image-Edit) sees the whole source
beside the image it renders from noise; there is no strength. Its output
keeps the source's size, scaled down to the family's native area when the
source is larger (these models edit at about a megapixel).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageMode:
    strength: float  # fraction of the noise schedule re-run (img2img "strength")
    scale: float = 1.0  # output side / source side
    needs_mask: bool = False
    pipeline: str = "img2img"  # or "inpaint", or "edit"


IMAGE_MODES: dict[str, ImageMode] = {
    "vary_subtle": ImageMode(strength=0.5),
    "vary_strong": ImageMode(strength=0.85),
    "upscale_1.5x": ImageMode(strength=0.382, scale=1.5),
    "upscale_2x": ImageMode(strength=0.382, scale=2.0),
    "inpaint": ImageMode(strength=1.0, needs_mask=True, pipeline="inpaint"),
    "outpaint": ImageMode(strength=1.0, pipeline="inpaint"),
    "edit": ImageMode(strength=1.0, pipeline="edit"),
}

OUTPAINT_DIRECTIONS = ("left", "right", "top", "bottom")
#: An outpaint adds this fraction of the source's side in each direction asked for.
OUTPAINT_FRACTION = 0.25
#: The mask of an outpaint reaches this many pixels into the source, so the seam is repainted too.
OUTPAINT_OVERLAP_PX = 8


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def output_size(mode: str, source_w: int, source_h: int, multiple: int,
                outpaint: tuple[str, ...] = OUTPAINT_DIRECTIONS, edit_pixels: int | None = None) -> tuple[int, int]:
    """The size of the image ``mode`` makes from a ``source_w`` x ``source_h`` source.

    Sides are rounded to ``multiple`` (what the model family needs); the
    worker resizes the source to fit before rendering. An edit keeps the
    source's aspect ratio and, beyond ``edit_pixels``, is scaled down to
    about that area.
    """
    spec = IMAGE_MODES[mode]
    if mode == "edit":
        scale = min(1.0, math.sqrt(edit_pixels / (source_w * source_h))) if edit_pixels else 1.0
        return _round_to(source_w * scale, multiple), _round_to(source_h * scale, multiple)
    if mode == "outpaint":
        pads = outpaint_pads(source_w, source_h, outpaint, multiple)
        return source_w + pads[0] + pads[1], source_h + pads[2] + pads[3]
    return _round_to(source_w * spec.scale, multiple), _round_to(source_h * spec.scale, multiple)


def outpaint_pads(source_w: int, source_h: int, directions: tuple[str, ...], multiple: int) -> tuple[int, int, int, int]:
    """Pixels added on the left, right, top and bottom; each new side is a multiple of ``multiple``."""
    def axis(side: int, first: bool, second: bool) -> tuple[int, int]:
        grow = math.ceil(side * OUTPAINT_FRACTION / multiple) * multiple
        a, b = (grow if first else 0), (grow if second else 0)
        extra = (-(side + a + b)) % multiple  # a source side that is not a multiple itself
        if second:
            b += extra
        elif first:
            a += extra
        return a, b

    left, right = axis(source_w, "left" in directions, "right" in directions)
    top, bottom = axis(source_h, "top" in directions, "bottom" in directions)
    return left, right, top, bottom
