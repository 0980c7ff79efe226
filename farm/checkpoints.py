"""Single-file checkpoints (one ``.safetensors`` file, the layout most model
sites publish) turned into the diffusers folders farm serves.

diffusers' ``from_single_file`` does the conversion, but it needs the
configs of a diffusers model of the same family, and fetches them from the
hub unless told where they are. farm never reaches the hub behind a user's
back, so an import names a local diffusers folder whose configs to use
(``farm models add ID FILE --config DIR``); without one the command is
refused with the exact commands that would do it.

Pickled checkpoints (``.ckpt``, ``.pt``) are refused: loading one can run
code.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from farm.modelcheck import folder_problems

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


class CheckpointError(Exception):
    """A single-file checkpoint that cannot be imported, and what to do instead."""


def single_file_refusal(model_id: str, file: Path, pipeline_class: str | None) -> str:
    """Why ``file`` was not registered as it is, with the commands that import it."""
    if file.suffix.lower() in PICKLE_SUFFIXES:
        return (f"{file} is a pickled checkpoint, which farm does not load (loading one can run code); "
                "convert it to .safetensors with the tool that made it, then import that file")
    cls = pipeline_class or "StableDiffusionXLPipeline"
    out = file.with_suffix("")
    guess = "" if pipeline_class else f" ({cls} for SDXL; StableDiffusionPipeline, FluxPipeline or StableDiffusion3Pipeline for those families)"
    return (
        f"{file} is a single-file checkpoint; farm serves diffusers folders. Import it offline with the configs of a "
        f"diffusers model of the same family (any copy of that family's base model):\n"
        f"  farm models add {model_id} {file} --config DIFFUSERS_FOLDER\n"
        f"or convert it yourself with the hub's configs (needs network){guess}, then register the folder:\n"
        f"  python -c \"from diffusers import {cls}; {cls}.from_single_file('{file}').save_pretrained('{out}')\"\n"
        f"  farm models add {model_id} {out}"
    )


def checkpoint_dtype(file: Path) -> str:
    """The dtype of the checkpoint's weights (its first floating tensor), as torch names it."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            found = SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype())
            if found:
                return found
    return "float32"


def _from_single_file(cls, file: Path, config_dir: Path, dtype):
    """``cls.from_single_file`` with the configs of ``config_dir``. A checkpoint
    that holds only some components (a FLUX or SD3 file often holds just the
    transformer) takes the others from ``config_dir`` when it has their
    weights, as diffusers' error advises: the component is loaded from there
    and passed in, and the import tried again."""
    import json
    import re

    from diffusers.loaders.single_file_utils import SingleFileComponentError

    index = json.loads((config_dir / "model_index.json").read_text())
    given: dict = {}
    while True:
        try:
            return cls.from_single_file(str(file), config=str(config_dir), local_files_only=True, torch_dtype=dtype, **given)
        except SingleFileComponentError as exc:
            match = re.search(r"Failed to load (\w+)", str(exc))
            names = [name for name, spec in index.items()
                     if match and isinstance(spec, list) and len(spec) == 2 and spec[1] == match.group(1) and name not in given
                     and not folder_problems_of_component(config_dir, name)]
            if not names:
                raise CheckpointError(f"{file} lacks {match.group(1) if match else 'a component'} and {config_dir} has no weights "
                                      "for it either; give --config a complete diffusers folder of the same family") from None
            for name in names:
                logger.info("the checkpoint has no %s; taking it from %s", name, config_dir)
                given[name] = load_component(config_dir, name, index[name], dtype)
        except Exception as exc:  # diffusers' own words: keys that do not fit the family, missing configs
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot import {file} as a {cls.__name__} with the configs of {config_dir}: {message}") from None


def folder_problems_of_component(config_dir: Path, name: str) -> bool:
    """Whether the component folder ``name`` lacks weights."""
    folder = config_dir / name
    return not folder.is_dir() or not any(p.name.endswith((".safetensors", ".bin", ".index.json")) for p in folder.iterdir())


def load_component(folder: Path, name: str, spec: list, dtype, **extras):
    """Component ``name`` of the diffusers folder ``folder`` (``spec``: its model_index.json entry, [library, class])."""
    import importlib

    library, class_name = spec
    component_class = getattr(importlib.import_module(library), class_name)
    return component_class.from_pretrained(str(folder), subfolder=name, torch_dtype=dtype, local_files_only=True, **extras)


def import_single_file(file: Path, target: Path, pipeline_class: str, config_dir: Path) -> Path:
    """Convert ``file`` with the configs (and tokenizers) of the diffusers
    folder ``config_dir`` into a new diffusers folder ``target``, offline;
    the weights keep the checkpoint's dtype."""
    import diffusers
    import torch

    if file.suffix.lower() != ".safetensors":
        raise CheckpointError(single_file_refusal(target.name, file, pipeline_class))
    problems = folder_problems(config_dir, weights=False)
    if problems:
        raise CheckpointError(f"--config {config_dir} cannot lend its configs: {'; '.join(problems)}")
    if target.exists() and any(target.iterdir()):
        raise CheckpointError(f"{target} exists already; remove it or register under another id")
    try:
        dtype = getattr(torch, checkpoint_dtype(file))
    except Exception as exc:  # safetensors says why: a truncated or foreign file
        raise CheckpointError(f"{file} is not a readable .safetensors file ({exc})") from None
    cls = getattr(diffusers, pipeline_class)
    logger.info("importing %s as a %s with the configs of %s", file, pipeline_class, config_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, transformers_logging):
            library.disable_progress_bar()  # a CLI command: one line says what happens
        pipe = _from_single_file(cls, file, config_dir, dtype)
        pipe.save_pretrained(staging, safe_serialization=True)
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
