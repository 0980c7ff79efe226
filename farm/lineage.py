"""Lineage records: everything needed to know where an image came from and to
render it again.

The part embedded in the image holds only what is the same for every
re-render (parameters, model, software), so the same seed and parameters give
the same bytes; ids, worker and timings go in the sidecar and the database.
"""

from __future__ import annotations

import json
import logging
import platform
from typing import Any

import farm
from farm.generation.wildcards import image_prompts

logger = logging.getLogger(__name__)


def software_versions(device_kind: str) -> dict[str, str | None]:
    import diffusers
    import torch
    import transformers

    return {
        "farm": farm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if device_kind == "cuda" else None,
    }


def image_params(params: dict[str, Any], seed: int, index: int = 0) -> dict[str, Any]:
    """What made image ``index`` of a job: the same for a rerender, whatever its place in its job."""
    resolved = {key: params[key] for key in (
        "width", "height", "steps", "guidance_scale", "sampler", "scheduler", "output_format",
    )}
    resolved["final_prompt"], resolved["final_negative_prompt"], choices = image_prompts(params, index)
    resolved["seed"] = seed
    if choices:
        resolved["wildcards"] = choices  # each __name__ and the line this image's seed drew for it
    # How the prompt and settings were arrived at, where the request used
    # them (a plain render's record stays as short as it was).
    for extra in ("image_task", "clip_skip", "freeu", "detail_guidance", "sag_scale", "loras", "image_prompts", "references", "refiner", "styles",
                  "preset", "performance", "prompt_expansion", "prompt_expansion_engine", "prompt_expansion_model",
                  "same_seed", "variant"):
        if params.get(extra):
            resolved[extra] = params[extra]
    for written, final in (("prompt", "final_prompt"), ("negative_prompt", "final_negative_prompt")):
        if params.get(written) is not None and params[written] != resolved[final]:
            resolved[written] = params[written]
    return resolved


def reproducible_record(params: dict[str, Any], model: dict[str, Any], software: dict[str, Any], device_kind: str) -> dict[str, Any]:
    return {"params": params, "model": model, "software": software, "device": device_kind}


def parameters_text(params: dict[str, Any], model_id: str) -> str:
    """The 'parameters' text form other tools read (prompt, negative, key: value list)."""
    settings = [
        f"Steps: {params['steps']}",
        f"Sampler: {params['sampler']}",
        f"Schedule type: {params['scheduler']}",
        f"CFG scale: {params['guidance_scale']}",
        f"Seed: {params['seed']}",
        f"Size: {params['width']}x{params['height']}",
        f"Model: {model_id}",
        f"Version: farm {farm.__version__}",
    ]
    if params.get("loras"):
        settings.insert(5, "Lora hashes: " + ", ".join(f"{l['name']}:{l['sha256'][:12]}" for l in params["loras"]))
        settings.insert(6, "Loras: " + ", ".join(f"{l['name']}:{l['weight']}" for l in params["loras"]))
    task = params.get("image_task")
    if task:
        settings.insert(5, f"Denoising strength: {task['strength']}")
        settings.insert(6, f"Image mode: {task['mode']}")
    if params.get("refiner"):
        # The names other tools use for an SDXL refiner pass.
        settings.insert(-2, f"Refiner: {params['refiner']['model']}")
        settings.insert(-2, f"Refiner switch at: {params['refiner']['switch']}")
    text = params["final_prompt"]
    if params.get("final_negative_prompt"):
        text += f"\nNegative prompt: {params['final_negative_prompt']}"
    return text + "\n" + ", ".join(settings)


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
