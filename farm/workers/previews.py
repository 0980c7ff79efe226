"""Live previews: the current latents of a render as a small JPEG, made with
a fixed linear latent-to-RGB projection per family (no VAE decode, no extra
model), cheap enough to run every few steps on the render thread.

A VAE latent pixel stands for an 8x8 patch of the image, and its channels
are close to a linear colour transform of that patch (the encoder's last
layer is a 1x1 convolution over features that are mostly colour and local
contrast). Each family declares its matrix (``Family.latent_rgb``, set by
hand in ``farm/families/latent_rgb.py``). A preview only has to show the
composition and the main colours; ``fit_projection`` derives a matrix for
any given VAE by least squares when a closer match is wanted.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np

from farm.families import all_families
from farm.families.latent_rgb import FLUX_16, SD_4

logger = logging.getLogger(__name__)

# Each family's latent-to-RGB table (farm/families/latent_rgb.py).
PROJECTIONS: dict[str, tuple[tuple[float, float, float], ...]] = {f.name: f.latent_rgb for f in all_families()}
# Models whose latents have another channel count than their family's usual
# (the tiny test models of FLUX and SD3 have 4) use the table of that count.
_BY_CHANNELS = {4: SD_4, 16: FLUX_16}


def projection_for(family: str, channels: int) -> np.ndarray:
    table = PROJECTIONS.get(family)
    if table is None or len(table) != channels:
        table = _BY_CHANNELS.get(channels)
    if table is None:
        # Anything else: the first three channels as R, G, B.
        matrix = np.zeros((channels, 3), dtype=np.float32)
        for index in range(min(channels, 3)):
            matrix[index, index] = 0.3
        return matrix
    return np.asarray(table, dtype=np.float32)


def unpack_latents(latents, width: int, height: int):
    """(batch, channels, h, w) latents from FLUX's packed tokens (batch,
    tokens, channels * 4): each token is a 2x2 patch of latent pixels,
    tokens in row order. 4-D latents are returned as they are."""
    if latents.ndim == 4:
        return latents
    if latents.ndim != 3:
        raise ValueError(f"latents of shape {tuple(latents.shape)} are neither packed nor (batch, channels, h, w)")
    batch, tokens, packed = latents.shape
    rows = max(1, round(math.sqrt(tokens * height / width)))
    cols = tokens // rows
    if rows * cols != tokens or packed % 4:
        raise ValueError(f"cannot unpack {tokens} tokens of {packed} values for a {width}x{height} image")
    channels = packed // 4
    grid = latents.reshape(batch, rows, cols, channels, 2, 2)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * 2, cols * 2)


def latents_to_rgb(latents, family: str, width: int, height: int) -> np.ndarray:
    """The first image of a batch of latents as an (h, w, 3) uint8 array."""
    import torch

    unpacked = unpack_latents(latents.detach(), width, height)[0].to(device="cpu", dtype=torch.float32).contiguous().numpy()
    channels = unpacked.shape[0]
    matrix = projection_for(family, channels)
    # tensordot (one matrix product) rather than einsum: 16x faster on a
    # 128 x 128 latent (bench/preview_cost.py).
    rgb = 0.5 + np.tensordot(unpacked, matrix, axes=([0], [0]))
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def preview_jpeg(latents, family: str, width: int, height: int, side: int = 128, quality: int = 70) -> bytes:
    """A JPEG of at most ``side`` pixels on its longer side, in the image's aspect ratio."""
    import PIL.Image

    image = PIL.Image.fromarray(latents_to_rgb(latents, family, width, height), "RGB")
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, PIL.Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def fit_projection(latents, images) -> np.ndarray:
    """Least-squares latent-to-RGB matrix (channels x 3, around mid-grey) from
    latents (batch, channels, h, w) and the images they encode (batch, 3, H,
    W in [0, 1]), each image averaged down to its latent's size."""
    import torch

    lat = latents.detach().to(torch.float32)
    target = torch.nn.functional.adaptive_avg_pool2d(images.to(torch.float32), lat.shape[-2:]) - 0.5
    x = lat.permute(0, 2, 3, 1).reshape(-1, lat.shape[1]).numpy()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    matrix, *_ = np.linalg.lstsq(x, y, rcond=None)
    return matrix.astype(np.float32)
