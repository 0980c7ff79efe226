"""Quantized variants with torch: the configs diffusers loads them with, and
'farm models quantize', which writes a variant's folder from a 16-bit one.

Every format goes through diffusers' own quantization support, so the kernels
are the libraries' (farm/quantization.py lists them): torchao int8
weight-only (``TorchAoConfig``), bitsandbytes NF4 and LLM.int8()
(``BitsAndBytesConfig``), and GGUF files (``GGUFQuantizationConfig`` with
``from_single_file``). A pipeline's transformers components (FLUX's T5) get
transformers' config of the same library, through diffusers'
``PipelineQuantizationConfig``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from farm.checkpoints import load_component
from farm.families import get_family
from farm.families.loading import dtype_kwarg
from farm.quantization import QuantFormat, QuantizationError, device_refusal, get_format, gguf_file, read_folder_quantization

logger = logging.getLogger(__name__)

FARM_MODEL_FILE = "farm_model.json"
# GGUF's Q8_0 and Q4_0 quantize rows in blocks of 32 weights.
GGUF_BLOCK = 32


def _model_index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text())


def component_config(fmt: QuantFormat, library: str, dtype):
    """The quantization config of ``fmt`` for a component from ``library`` ("diffusers" or "transformers")."""
    module = importlib.import_module(library)
    if fmt.library == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        return module.TorchAoConfig(Int8WeightOnlyConfig())
    if fmt.name == "nf4":
        return module.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                         bnb_4bit_compute_dtype=dtype)
    if fmt.name == "int8-bnb":
        return module.BitsAndBytesConfig(load_in_8bit=True)
    raise QuantizationError(f"{fmt.name} is not applied at load; it is written to files by 'farm models quantize'")


def pipeline_config(folder: Path, record: dict[str, Any], dtype):
    """diffusers' PipelineQuantizationConfig quantizing ``record``'s components of ``folder`` while they load."""
    from diffusers import PipelineQuantizationConfig

    fmt, index = get_format(record["format"]), _model_index(folder)
    return PipelineQuantizationConfig(quant_mapping={name: component_config(fmt, index[name][0], dtype)
                                                     for name in record["components"]})


def load_extras(folder: Path, record: dict[str, Any] | None, dtype) -> dict[str, Any]:
    """What the family's loader passes to from_pretrained for a model quantized as
    ``record``: the config that quantizes while loading, or the GGUF
    components loaded from their files. A folder whose components were saved
    quantized (torchao, bitsandbytes) needs nothing: their config.json says how."""
    if not record:
        return {}
    if record.get("at_load"):
        return {"quantization_config": pipeline_config(folder, record, dtype)}
    from diffusers import GGUFQuantizationConfig

    extras = {}
    index = _model_index(folder)
    for name in record.get("components", ()):
        file = gguf_file(folder / name)
        if file is None:
            continue
        cls = getattr(importlib.import_module(index[name][0]), index[name][1])
        extras[name] = cls.from_single_file(str(file), config=str(folder), subfolder=name, local_files_only=True,
                                            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                            **dtype_kwarg(dtype))
    return extras


def check_device(record: dict[str, Any] | None, device_type: str) -> None:
    refusal = device_refusal(record, device_type)
    if refusal:
        raise QuantizationError(refusal)


# --------------------------------------------------------------------------- writing variants


def _link_or_copy(source: str, target: str) -> str:
    """A hard link where the file system allows (no second copy of a 9 GB text encoder), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def _weights_dtype(component: Path):
    import torch

    from farm.checkpoints import checkpoint_dtype

    files = sorted(component.glob("*.safetensors"))
    return getattr(torch, checkpoint_dtype(files[0])) if files else torch.float32


def _write_gguf(component: Path, fmt: QuantFormat) -> None:
    """Replace the component's safetensors weights by one .gguf file: 2-D
    weights whose rows split into blocks in ``fmt``'s type, the rest in F32.
    The keys stay diffusers', which from_single_file reads without conversion."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    qtype = gguf.GGMLQuantizationType[fmt.gguf_type]
    writer = gguf.GGUFWriter(str(component / "diffusion_pytorch_model.gguf"), arch="farm")
    shards = sorted(component.glob("*.safetensors"))
    for shard in shards:
        for key, tensor in load_file(str(shard)).items():
            array = tensor.float().numpy()
            if array.ndim == 2 and array.shape[-1] % GGUF_BLOCK == 0:
                packed = gguf.quants.quantize(array, qtype)
                writer.add_tensor(key, packed, raw_shape=packed.shape, raw_dtype=qtype)
            else:
                writer.add_tensor(key, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for path in (*shards, *component.glob("*.safetensors.index.json")):
        path.unlink()


def quantize_folder(source: Path, target: Path, fmt_name: str, family: str, *, base: str | None = None,
                    variant: str | None = None) -> dict[str, Any]:
    """Write a quantized copy of the diffusers folder ``source`` to ``target``
    (unchanged components hard-linked) and return its quantization record.
    ``base`` and ``variant`` go into its farm_model.json for the registry."""
    fmt = get_format(fmt_name)
    if not fmt.writes_files:
        raise QuantizationError(f"{fmt.name} is quantized by {fmt.library} on a CUDA GPU while a worker loads it; "
                                f"register it with: farm models add ID {source} --quantize {fmt.name}")
    if read_folder_quantization(source) is not None:
        raise QuantizationError(f"{source} is quantized already; quantize a 16-bit or fp32 folder")
    if target.exists() and any(target.iterdir()):
        raise QuantizationError(f"{target} exists already; remove it or choose another --out")
    declared = get_family(family)
    components = [declared.denoiser] if fmt.library == "gguf" else list(declared.quantized_components)
    index = _model_index(source)
    missing = [name for name in components if not (source / name).is_dir() or name not in index]
    if missing:
        raise QuantizationError(f"{source} has no {', '.join(missing)} component to quantize")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=_link_or_copy)
        record = {"format": fmt.name, "components": components}
        for name in components:
            if fmt.library == "gguf":
                _write_gguf(staging / name, fmt)
                continue
            dtype = _weights_dtype(source / name)
            config = component_config(fmt, index[name][0], dtype)
            model = load_component(source, name, index[name], dtype, quantization_config=config)
            shutil.rmtree(staging / name)
            model.save_pretrained(str(staging / name), safe_serialization=True)
            logger.info("quantized %s of %s as %s", name, source, fmt.name)
        marker_path = staging / FARM_MODEL_FILE
        marker = json.loads(marker_path.read_text()) if marker_path.is_file() else {}
        marker_path.unlink(missing_ok=True)  # a link to the source's: write a new file, not through it
        # A quantized copy of the "dev" variant is "dev-int8"; of a plain model, "int8".
        variant = variant or (f"{marker['variant']}-{fmt.name}" if marker.get("variant") else fmt.name)
        marker.update(family=family, variant=variant, quantization={"format": fmt.name})
        if base:
            marker["base"] = base
        marker_path.write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_folder_quantization(target)


def import_gguf_file(file: Path, target: Path, family: str, config_dir: Path) -> dict[str, Any]:
    """A variant folder from a prequantized GGUF file of the denoiser (the
    layout GGUF releases of FLUX and SD3 ship): the other components, the
    configs and tokenizers come from the diffusers folder ``config_dir``
    (hard-linked), the denoiser's weights are the file. from_single_file
    converts the original checkpoint keys when the worker loads it."""
    from farm.modelcheck import folder_problems

    problems = folder_problems(config_dir)
    if problems:
        raise QuantizationError(f"--config {config_dir} cannot lend its components: {'; '.join(problems)}")
    if target.exists() and any(target.iterdir()):
        raise QuantizationError(f"{target} exists already; remove it or register under another id")
    denoiser = get_family(family).denoiser
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(config_dir, staging, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=lambda folder, names: [FARM_MODEL_FILE] if Path(folder) == config_dir else [])
        for path in (staging / denoiser).iterdir():
            if path.name != "config.json":
                path.unlink()
        _link_or_copy(str(file), str(staging / denoiser / file.name))
        marker = {"family": family, "variant": "gguf", "quantization": {"format": "gguf"}}
        (staging / FARM_MODEL_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_folder_quantization(target)
