"""What a render is expected to cost before it runs (GPU seconds).

Used to weigh queued work for fair share and to reserve quota at submission;
the worker's measured time replaces the estimate when the job finishes.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Seconds per step on a reference GPU at the family's native size.
STEP_S = {"sd": 0.05, "sdxl": 0.12, "flux": 0.45, "sd3": 0.3}
NATIVE_PIXELS = {"sd": 512 * 512, "sdxl": 1024 * 1024, "flux": 1024 * 1024, "sd3": 1024 * 1024}


def estimate_render_s(family: str, width: int, height: int, steps: int, images: int = 1) -> float:
    per_image = steps * STEP_S.get(family, 0.1) * max(width * height / NATIVE_PIXELS.get(family, 512 * 512), 0.25)
    return per_image * images
