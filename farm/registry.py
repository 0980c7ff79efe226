"""The model registry: model id -> local directory or hub repo id, with its
pipeline family, dtype and estimated VRAM. Rows live in the database so every
worker on every machine sees the same registry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.families import detect_family as family_from_index
from farm.families import family_names, find_family
from farm.models import ModelEntry
from farm.quantization import VRAM_OVERHEAD, QuantizationError, get_format, read_folder_quantization
from farm.quantization import estimate_vram_gb as estimate_quantized_vram_gb
from farm.spec import ModelInfo

logger = logging.getLogger(__name__)

#: Every family a model may be registered as (farm/families), refiners included.
FAMILIES = family_names()


class RegistryError(Exception):
    pass


def pipeline_class_for(family: str | None) -> str | None:
    """The diffusers pipeline class a family's folders are saved as."""
    found = find_family(family)
    return found.pipeline_class if found is not None else None


def _farm_marker(directory: Path) -> dict:
    """farm_model.json of a local folder (tiny models write one), or {}."""
    marker = directory / "farm_model.json"
    try:
        return json.loads(marker.read_text()) if marker.is_file() else {}
    except (OSError, ValueError):
        return {}


def detect_family(directory: Path) -> str | None:
    """Read a diffusers folder's model_index.json (or farm_model.json) for its family."""
    marker = directory / "farm_model.json"
    if marker.is_file():
        family = json.loads(marker.read_text()).get("family")
        if family:
            return family
    index = directory / "model_index.json"
    if index.is_file():
        return family_from_index(json.loads(index.read_text()))
    return None


def measure_weights_gb(directory: Path) -> float:
    """Bytes of the weights on disk (quantized files at their own size); fp32 files are counted as loaded in fp32."""
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf") and p.is_file())
    return total / 1e9


def add_model(session: Session, model_id: str, source: str, *, family: str | None = None, vram_gb: float | None = None,
              revision: str | None = None, dtype: str | None = None, description: str = "",
              default_steps: int | None = None, base: str | None = None, variant: str | None = None,
              default_guidance: float | None = None, quantize_at_load: str | None = None) -> ModelEntry:
    """Register ``model_id``. A folder whose components are quantized
    (prequantized, or written by 'farm models quantize') becomes a quantized
    variant with its VRAM measured from those files; ``quantize_at_load``
    (a format of farm/quantization.py) registers a 16-bit folder as a variant
    the worker quantizes while loading, its VRAM estimated from the format's
    bits per weight."""
    if session.get(ModelEntry, model_id) is not None:
        raise RegistryError(f"model {model_id!r} is already registered")
    marker = _farm_marker(Path(source).expanduser())
    quantization = _quantization_of(Path(source).expanduser(), quantize_at_load, family or marker.get("family"))
    if quantization is not None and variant is None and not (marker.get("quantization") and marker.get("variant")):
        # A quantized copy of "flux" is variant "nf4"; of the "dev" variant, "dev-nf4".
        fmt = quantization["format"]
        variant = f"{marker['variant']}-{fmt}" if marker.get("variant") else fmt
        base = base or marker.get("base") or model_id.removesuffix(f"-{variant}").removesuffix(f"-{fmt}")
    variant = variant or marker.get("variant")
    if variant is not None:
        # "flux-schnell" with variant "schnell" belongs to "flux"; otherwise the id is the base.
        base = base or marker.get("base") or model_id.removesuffix(f"-{variant}")
        clash = session.execute(select(ModelEntry.id).where(ModelEntry.base == base, ModelEntry.variant == variant)).scalar()
        if clash is not None:
            raise RegistryError(f"{base} already has a variant {variant!r}: model {clash}")
    elif base is not None:
        raise RegistryError("--base names the model a variant belongs to; give --variant as well")
    default_steps = default_steps or marker.get("default_steps")
    default_guidance = default_guidance if default_guidance is not None else marker.get("default_guidance")
    path = Path(source).expanduser()
    is_local = path.is_dir()
    if path.is_file():
        from farm.checkpoints import single_file_refusal

        raise RegistryError(single_file_refusal(model_id, path, pipeline_class_for(family)))
    if is_local:
        from farm.modelcheck import folder_problems

        problems = folder_problems(path)
        if problems:
            raise RegistryError(f"not registered: {'; '.join(problems)}")
        source = str(path.resolve())
        detected = detect_family(path)
        family = family or detected
        if family is None:
            raise RegistryError(f"cannot tell the family of {source}: pass --family ({', '.join(FAMILIES)})")
        if quantization is not None and quantization["at_load"]:
            vram_gb = vram_gb or estimate_quantized_vram_gb(path, quantization)
        vram_gb = vram_gb or round(max(measure_weights_gb(path), 0.001) * VRAM_OVERHEAD, 4)
        from farm.hub import hash_weights, weights_fingerprint

        files = hash_weights(path)
        weights_sha256 = weights_fingerprint(files) if files else None
    else:
        from farm.hub import is_hub_repo_id

        if not is_hub_repo_id(source):
            raise RegistryError(f"{source!r} is neither a local directory nor a hub repo id like 'owner/name'")
        if family is None:
            raise RegistryError(f"pass --family for hub model {source!r} ({', '.join(FAMILIES)})")
        files, weights_sha256 = None, None  # recorded by 'farm models pull'
    declared = find_family(family)
    if declared is None:
        raise RegistryError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if quantization is not None and not quantization["components"]:
        quantization["components"] = list(declared.quantized_components)
    if quantization is not None and vram_gb is None:  # a hub model quantized at load: its 16-bit default scaled
        vram_gb = round(declared.default_vram_gb * get_format(quantization["format"]).bits / 16, 3)
    entry = ModelEntry(
        id=model_id,
        source=source,
        family=family,
        dtype=dtype,
        revision=revision,
        vram_gb=vram_gb or declared.default_vram_gb,
        default_steps=default_steps or declared.default_steps,
        default_guidance=default_guidance if default_guidance is not None else declared.default_guidance,
        description=description,
        base=base,
        variant=variant,
        quantization=quantization,
        files=files,
        weights_sha256=weights_sha256,
    )
    session.add(entry)
    session.flush()
    return entry


def _quantization_of(path: Path, at_load: str | None, family: str | None) -> dict | None:
    """The quantization record of a new entry (farm/quantization.py), or None for plain weights."""
    try:
        found = read_folder_quantization(path) if path.is_dir() else None
        if at_load is None:
            return found
        fmt = get_format(at_load)
    except QuantizationError as exc:
        raise RegistryError(str(exc)) from None
    if found is not None:
        raise RegistryError(f"{path} is quantized already ({found['format']}); register it without --quantize")
    if fmt.library == "gguf":
        raise RegistryError(f"{fmt.name} is written to files, not applied at load: "
                            f"farm models quantize SOURCE --format {fmt.name} --id ID")
    declared = find_family(family)
    components = list(declared.quantized_components) if declared is not None else []
    return {"format": fmt.name, "library": fmt.library, "components": components, "at_load": True, "config": None}


def list_models(session: Session) -> list[ModelEntry]:
    return list(session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars())


def model_infos(session: Session) -> dict[str, ModelInfo]:
    rows = session.execute(select(ModelEntry.id, ModelEntry.family, ModelEntry.default_steps, ModelEntry.default_guidance,
                                  ModelEntry.base, ModelEntry.variant,
                                  ModelEntry.quantization["format"].as_string().label("quantized")))
    return {row.id: ModelInfo(row.id, row.family, row.default_steps, row.default_guidance, row.base, row.variant,
                              row.quantized) for row in rows}


def is_local_source(entry: ModelEntry) -> bool:
    return Path(entry.source).is_dir()


UNFINISHED = ("queued", "assigned", "running")


def remove_model(session: Session, model_id: str, *, force: bool = False) -> list:
    """Take ``model_id`` out of the registry; returns the ids of the jobs it
    canceled. Unfinished jobs that use it (queued, assigned or running) make
    this a RegistryError unless ``force``, which cancels them (a running
    render stops at its next step). Finished jobs keep the model's id, their
    outputs and lineage: only the registry row goes."""
    from farm import states
    from farm.models import Job

    if session.get(ModelEntry, model_id) is None:
        raise RegistryError(f"no model {model_id!r}; see 'farm models list'")
    active = session.execute(select(Job.id).where(Job.model_id == model_id, Job.status.in_(UNFINISHED))).scalars().all()
    if active and not force:
        raise RegistryError(f"model {model_id} is used by {len(active)} unfinished job(s) (queued, assigned or running); "
                            "wait for them to finish, or pass --force to cancel them (running renders stop at their next step)")
    for job_id in active:
        states.cancel_job(session, job_id)
    session.delete(session.get(ModelEntry, model_id))
    session.flush()
    return list(active)
