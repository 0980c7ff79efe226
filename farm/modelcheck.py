"""What a diffusers model folder must hold before the registry takes it.

A folder registered with a missing or broken part used to fail only when a
worker loaded it, at render time (issue 21). This reads what diffusers would
read first, without importing it: ``model_index.json`` names the pipeline's
components; each named component needs its folder and its config, and every
model component (not a scheduler, tokenizer or image processor) its weights:
``*.safetensors`` or ``*.bin``, or a sharded index whose shards are all there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")  # .gguf: a GGUF-quantized component (farm/quantization.py)
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
# Files one of which a component of each kind needs; anything else is a model
# (config.json plus weights).
SCHEDULER_CONFIGS = ("scheduler_config.json",)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "spiece.model")
# transformers 5 saves a multimodal processor (Qwen2-VL's, say) with its image
# processor's settings nested in processor_config.json; older saves wrote
# preprocessor_config.json.
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    except ValueError as exc:
        return None, f"{path} is not valid JSON ({exc}); restore it from the model's source"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object; restore it from the model's source"
    return data, None


def _component_kind(class_name: str) -> str:
    if class_name.endswith("Scheduler") or class_name.endswith("Solver"):
        return "scheduler"
    if "Tokenizer" in class_name:
        return "tokenizer"
    if class_name.endswith(("FeatureExtractor", "ImageProcessor", "Processor")):
        return "processor"
    return "model"


def _weights_problem(folder: Path) -> str | None:
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.name.endswith(WEIGHT_SUFFIXES) and p.stat().st_size > 0 for p in files):
        return None
    for index in (p for p in files if p.name.endswith(INDEX_SUFFIXES)):
        data, problem = _read_json(index)
        if problem:
            return problem
        shards = sorted(set((data.get("weight_map") or {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if not shards:
            return f"{index} names no weight shards"
        if missing:
            return f"{folder} lacks the weight shards {', '.join(missing)} named in {index.name}"
        return None
    return f"{folder} has no weights (*.safetensors or *.bin)"


def folder_problems(directory: Path, *, weights: bool = True) -> list[str]:
    """Every problem that keeps ``directory`` from loading as a diffusers
    pipeline, one plain sentence each; [] when it looks whole. ``weights``
    False checks configs only (a folder lending its configs to a single-file
    import)."""
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        return [f"{directory} has no model_index.json, so it is not a diffusers model folder "
                "(a single .safetensors checkpoint is imported by naming the file itself)"]
    index, problem = _read_json(index_path)
    if problem:
        return [problem]
    if not index.get("_class_name"):
        return [f"{index_path} names no pipeline (_class_name)"]
    problems = []
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or None in spec:
            continue  # settings such as requires_safety_checker, and optional parts left out
        folder = directory / name
        if not folder.is_dir():
            problems.append(f"{directory} lacks the folder {name}/ that model_index.json names ({spec[1]})")
            continue
        kind = _component_kind(str(spec[1]))
        needed = {"scheduler": SCHEDULER_CONFIGS, "tokenizer": TOKENIZER_FILES, "processor": PROCESSOR_CONFIGS,
                  "model": ("config.json",)}[kind]
        present = [candidate for candidate in needed if (folder / candidate).is_file()]
        if not present:
            problems.append(f"{folder} lacks its config ({' or '.join(needed)})")
            continue
        if present[0].endswith(".json"):
            _, problem = _read_json(folder / present[0])
            if problem:
                problems.append(problem)
                continue
        if kind == "model" and weights:
            problem = _weights_problem(folder)
            if problem:
                problems.append(problem)
    return problems
