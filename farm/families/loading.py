"""Loading a family's pipeline class from a folder or hub id (diffusers imported when called)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def dtype_kwarg(dtype) -> dict[str, Any]:
    """from_pretrained's dtype keyword: ``dtype`` on newer diffusers, ``torch_dtype`` before.

    diffusers 0.42 deprecated ``torch_dtype`` (warning on every load); older
    releases do not know ``dtype``. The helper probed here came with the rename.
    """
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def from_pretrained(class_name: str, path: str, dtype, **kwargs):
    """``diffusers.<class_name>.from_pretrained(path)`` in ``dtype``, with ``kwargs``."""
    import diffusers

    return getattr(diffusers, class_name).from_pretrained(path, **kwargs, **dtype_kwarg(dtype))
