"""Quantized model variants: the formats farm knows, and what the registry,
the request check and the scheduler need to know of them.

A quantized variant is a registry entry of its own ("flux-nf4", variant "nf4"
of "flux") whose record says how its weights are quantized. Its VRAM is its
own: measured from its quantized files where they exist, otherwise estimated
from the format's bits per weight. The scheduler places it by that figure and
never on a worker without CUDA when the format needs CUDA. Nothing here
imports torch or diffusers; loading and quantizing live in
``farm/workers/quantize.py``.

The record (``ModelEntry.quantization``, JSON) holds:

- ``format``: a key of ``FORMATS``;
- ``library``: the library whose kernels run it (torchao, bitsandbytes, gguf);
- ``components``: the pipeline components that are quantized;
- ``at_load``: true when the variant's source holds 16-bit weights and the
  worker quantizes them while loading (bitsandbytes cannot quantize without a
  GPU, so a CPU-only machine registers nf4 this way); false when its files are
  quantized already (``farm models quantize`` wrote them, or a prequantized
  download);
- ``config``: the quantization config as diffusers serializes it, for the lineage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantFormat:
    name: str
    library: str  # the package whose kernels run it
    title: str
    bits: float  # bits per weight of a quantized layer, scales included (for VRAM estimates)
    needs_cuda: bool  # only loads on a CUDA GPU (bitsandbytes)
    writes_files: bool  # 'farm models quantize' can write its files on this machine's CPU
    gguf_type: str | None = None  # GGUF: the ggml type the weights are written as


FORMATS: dict[str, QuantFormat] = {f.name: f for f in (
    # torchao int8 weight-only: one int8 per weight and one scale per output row.
    QuantFormat("int8", "torchao", "int8 weight-only (torchao)", 8.0, needs_cuda=False, writes_files=True),
    # NF4 in blocks of 64 with an fp32 absmax each (4 + 32/64 bits), the absmax
    # themselves 8-bit in blocks of 256 ("double quantization", QLoRA,
    # arXiv:2305.14314): 4 + 8/64 + 32/(64*256) bits per weight.
    QuantFormat("nf4", "bitsandbytes", "4-bit NormalFloat (bitsandbytes)", 4.127, needs_cuda=True, writes_files=False),
    # LLM.int8(): int8 weights, one fp16 scale per row (arXiv:2208.07339).
    QuantFormat("int8-bnb", "bitsandbytes", "LLM.int8() 8-bit (bitsandbytes)", 8.0, needs_cuda=True, writes_files=False),
    # GGUF blocks of 32 weights with one fp16 scale: Q8_0 8.5 bits, Q4_0 4.5.
    QuantFormat("gguf-q8_0", "gguf", "GGUF Q8_0", 8.5, needs_cuda=False, writes_files=True, gguf_type="Q8_0"),
    QuantFormat("gguf-q4_0", "gguf", "GGUF Q4_0", 4.5, needs_cuda=False, writes_files=True, gguf_type="Q4_0"),
)}
#: A GGUF file's own quantization (a prequantized download), whatever its ggml types.
GGUF_FILE = QuantFormat("gguf", "gguf", "GGUF file", 0.0, needs_cuda=False, writes_files=False)
# Overhead on the weights the registry counts for every model (registry.add_model).
VRAM_OVERHEAD = 1.2


class QuantizationError(ValueError):
    """A quantization a model cannot have here, and what to do instead."""


def find_format(name: str | None) -> QuantFormat | None:
    if name == GGUF_FILE.name:
        return GGUF_FILE
    return FORMATS.get(name) if name else None


def get_format(name: str) -> QuantFormat:
    found = find_format(name)
    if found is None:
        raise QuantizationError(f"unknown quantization format {name!r}; choose one of {', '.join(FORMATS)}")
    return found


def needs_cuda(record: dict[str, Any] | None) -> bool:
    """Whether a model with this quantization record only loads on a CUDA GPU."""
    found = find_format((record or {}).get("format"))
    return found is not None and found.needs_cuda


def device_refusal(record: dict[str, Any] | None, device_type: str) -> str | None:
    """Why a model quantized as ``record`` cannot load on a ``device_type`` device, or None."""
    if needs_cuda(record) and device_type != "cuda":
        fmt = get_format(record["format"])
        return f"{fmt.name} needs a CUDA GPU ({fmt.library} has no {device_type} kernels for it); this device is {device_type}"
    return None


def describe(record: dict[str, Any] | None) -> str:
    """One short phrase for listings: "nf4 (transformer, text_encoder_2; quantized at load)"."""
    if not record:
        return "-"
    how = "; quantized at load" if record.get("at_load") else ""
    return f"{record['format']} ({', '.join(record.get('components', ()))}{how})"


# --------------------------------------------------------------------------- reading folders


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _format_of(config: dict[str, Any]) -> str | None:
    """Our format name for a diffusers/transformers ``quantization_config``."""
    method = config.get("quant_method")
    if method == "bitsandbytes":
        if config.get("load_in_4bit"):
            if config.get("bnb_4bit_quant_type", "fp4") != "nf4":
                return None  # fp4: not offered (NF4 is the better 4-bit type for normally distributed weights)
            return "nf4"
        return "int8-bnb" if config.get("load_in_8bit") else None
    if method == "torchao":
        kind = config.get("quant_type")
        if isinstance(kind, dict):  # diffusers >= 0.35 serializes the torchao config: {"default": {"_type": ...}}
            kind = (kind.get("default") or {}).get("_type")
        return "int8" if kind in ("Int8WeightOnlyConfig", "int8_weight_only", "int8wo") else None
    if method == "gguf":
        return GGUF_FILE.name
    return None


def gguf_file(component: Path) -> Path | None:
    """The .gguf weights file of a component folder, if it has one."""
    found = sorted(component.glob("*.gguf")) if component.is_dir() else []
    return found[0] if found else None


def read_folder_quantization(directory: Path) -> dict[str, Any] | None:
    """The quantization record of a prequantized diffusers folder (its
    components' config.json carry a ``quantization_config``; a GGUF component
    holds a .gguf file), or None for a plain folder. A folder quantized in
    a way farm does not run is a QuantizationError."""
    index = _read_config(directory / "model_index.json")
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        component = directory / name
        if gguf_file(component) is not None:
            found[name] = (GGUF_FILE.name, {"quant_method": "gguf", "file": gguf_file(component).name})
            continue
        config = _read_config(component / "config.json").get("quantization_config")
        if isinstance(config, dict):
            fmt = _format_of(config)
            if fmt is None:
                raise QuantizationError(f"{component} is quantized as {config.get('quant_method')!r} "
                                        f"({json.dumps(config, sort_keys=True)[:120]}), which farm does not run; "
                                        f"formats: {', '.join(FORMATS)}")
            found[name] = (fmt, config)
    if not found:
        return None
    formats = {fmt for fmt, _ in found.values()}
    marker = _read_config(directory / "farm_model.json").get("quantization") or {}
    # farm writes the exact GGUF type it used in farm_model.json; a download says only "gguf".
    fmt = marker.get("format") if marker.get("format") in FORMATS else sorted(formats)[0]
    if len(formats) > 1:
        raise QuantizationError(f"{directory} mixes quantization formats ({', '.join(sorted(formats))}); "
                                "farm runs one format per model")
    return {"format": fmt, "library": get_format(fmt).library, "components": sorted(found), "at_load": False,
            "config": {name: config for name, (_, config) in sorted(found.items())}}


# --------------------------------------------------------------------------- VRAM


def _component_bytes(component: Path) -> tuple[int, int]:
    """(bytes of the weights files, bytes per weight they are stored in; 0 when unknown)."""
    files = [p for p in component.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".gguf")]
    total = sum(p.stat().st_size for p in files)
    width = 0
    for path in files:
        if path.suffix == ".safetensors":
            width = _safetensors_width(path) or width
    return total, width


_WIDTHS = {"float32": 4, "float16": 2, "bfloat16": 2}


def _safetensors_width(path: Path) -> int:
    """Bytes per value of the file's floating weights, from its header; 0 when unreadable."""
    from farm.checkpoints import checkpoint_dtype

    try:
        return _WIDTHS[checkpoint_dtype(path)]
    except Exception as exc:  # a foreign or truncated file: leave the estimate to the bytes
        logger.info("cannot read the header of %s: %s", path, exc)
        return 0


def quantized_gb(weights: dict[str, float], record: dict[str, Any], load_bytes_per_weight: float = 2.0) -> float:
    """GB a pipeline whose components hold ``weights`` (name -> number of
    weights) takes once ``record``'s components are quantized: those at the
    format's bits per weight, the others at ``load_bytes_per_weight`` (16-bit
    on a GPU), times the registry's overhead."""
    bits = get_format(record["format"]).bits
    quantized = set(record.get("components", ()))
    total = sum(count * (bits / 8 if name in quantized else load_bytes_per_weight) for name, count in weights.items())
    return round(max(total / 1e9, 1e-6) * VRAM_OVERHEAD, 6)  # six places: tiny test models weigh about a megabyte


def estimate_vram_gb(directory: Path, record: dict[str, Any], load_bytes_per_weight: float = 2.0) -> float:
    """VRAM of a variant quantized at load from the 16-bit (or fp32) folder
    ``directory``: its components' weights counted from their files' sizes
    and dtypes (see quantized_gb)."""
    index = _read_config(directory / "model_index.json")
    weights = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or not (directory / name).is_dir():
            continue
        size, width = _component_bytes(directory / name)
        weights[name] = size / (width or load_bytes_per_weight)
    return quantized_gb(weights, record, load_bytes_per_weight)
