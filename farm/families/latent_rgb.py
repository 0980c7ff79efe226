"""Latent-to-RGB matrices for live previews, one per family's latent space.

A VAE latent pixel stands for an 8x8 patch of the image, and its channels are
close to a linear colour transform of that patch. These matrices were set by
hand from that reading, not fitted to any published VAE (none may be
downloaded here): channel 0 of the 4-channel SD/SDXL latents carries
brightness, channels 1 and 2 two opposing colour axes (warm/cool,
green/magenta) and channel 3 texture, which reads as a faint blue shift. The
16-channel latents of FLUX and SD3 spread the same four roles over four
groups of channels, and the 32-channel latents of FLUX.2 over four groups of
eight: an approximation by analogy (FLUX.2's VAE was trained anew, and its
channels need not keep those roles), good enough for a preview's layout and
rough colours, not fitted to that VAE.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Rows: latent channels; columns: contribution to R, G, B around mid-grey.
SD_4 = (
    (0.34, 0.33, 0.31),   # brightness
    (0.22, -0.04, -0.20),  # warm (+) / cool (-)
    (-0.12, 0.24, -0.08),  # green (+) / magenta (-)
    (-0.06, -0.05, 0.12),  # texture, a faint blue shift
)
SDXL_4 = (
    (0.30, 0.30, 0.28),
    (0.20, -0.02, -0.18),
    (-0.10, 0.22, -0.10),
    (-0.08, -0.06, 0.14),
)


def spread(rows: tuple[tuple[float, float, float], ...], groups: int, decay: float) -> tuple[tuple[float, float, float], ...]:
    """16 rows from 4 roles: role r takes channels r*groups .. r*groups+groups-1,
    each later channel of a group weighted ``decay`` times the one before and
    the group's weights summing to the role's, so a latent of ones in a
    group gives the same colour as one channel of the 4-channel table."""
    weights = [decay ** i for i in range(groups)]
    total = sum(weights)
    return tuple(tuple(value * w / total for value in role) for role in rows for w in weights)


FLUX_16 = spread(SD_4, 4, 0.7)
SD3_16 = spread(SDXL_4, 4, 0.8)
FLUX2_32 = spread(SD_4, 8, 0.8)
# Qwen-Image's VAE (a Wan-style video VAE, 16 channels, latents normalised
# per channel by the pipeline): the same four hand-set roles spread evenly,
# an approximation good enough for a preview, not a fit of its decoder.
QWEN_16 = spread(SD_4, 4, 0.9)
