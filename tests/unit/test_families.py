"""The family registry (farm/families): every family's declaration, detection
from tiny folders, the capability lookups the request check uses, and the
layering rules (no family branches outside farm/families, no worker import in
the request check, no import circle between the families and the spec)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from farm import families
from farm.families import Family, get_family
from farm.families.family import EXTRAS, IP_ADAPTER_LAYOUTS
from farm.families.performance import PERFORMANCE_MODES
from farm.families.samplers import SAMPLER_NAMES, SIGMA_SCHEDULES

ROOT = Path(__file__).resolve().parents[2]
NAMES = families.family_names()


def test_registry_lists_the_families_farm_serves():
    assert NAMES == ("sd", "sdxl", "flux", "sd3", "flux2", "flux2_klein", "flux_kontext", "qwen_image", "qwen_image_edit",
                     "sdxl_refiner")
    assert families.renderer_names() == ("sd", "sdxl", "flux", "sd3", "flux2", "flux2_klein", "flux_kontext", "qwen_image",
                                         "qwen_image_edit")
    assert families.refiner_names() == ("sdxl_refiner",)
    assert [f.name for f in families.all_families()] == list(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_family_declares_every_field(name):
    family = get_family(name)
    assert isinstance(family, Family) and family.name == name
    for f in dataclasses.fields(Family):
        value = getattr(family, f.name)
        assert value is not None or f.default is None, f"{name} leaves {f.name} unset"
    assert family.title and family.pipeline_class.endswith("Pipeline")
    assert callable(family.load) and callable(family.build_tiny)
    assert family.default_dtype in ("fp16", "bf16")
    assert family.samplers and set(family.samplers) <= set(family.sampler_table) <= set(SAMPLER_NAMES)
    for sampler, refused in family.unsupported_schedules.items():
        assert sampler in family.sampler_table and set(refused) <= set(SIGMA_SCHEDULES)
    assert set(family.performance) == set(PERFORMANCE_MODES)
    low, high = family.side_range
    assert 0 < low < high and low % family.side_multiple == 0 and family.native_side % family.side_multiple == 0
    for ratio in family.aspect_ratios:
        width, height = (int(side) for side in ratio.split("*"))
        assert width % family.side_multiple == 0 and height % family.side_multiple == 0
    assert family.default_vram_gb > 0 and family.default_steps > 0 and family.default_guidance >= 0 and family.step_s > 0
    assert family.extras <= set(EXTRAS)
    assert (family.freeu is not None) == family.takes("freeu")
    assert family.ip_adapter_layout in (None, *IP_ADAPTER_LAYOUTS)
    assert family.denoiser in ("unet", "transformer")
    assert family.latent_rgb and all(len(row) == 3 for row in family.latent_rgb)
    assert family.working_memory_gb(1024, 1024) > family.working_memory_gb(512, 512) > 0
    if family.tiny_variants:
        assert set(family.tiny_defaults) <= set(family.tiny_variants)


@pytest.mark.parametrize("name", families.renderer_names())
def test_every_performance_mode_uses_a_sampler_and_schedule_the_family_takes(name):
    for mode in get_family(name).performance.values():
        assert families.check_sampler(name, mode.sampler, mode.scheduler) is None


def test_a_refiner_finishes_a_family_that_takes_it():
    for name in families.refiner_names():
        finished = get_family(get_family(name).refines)
        assert finished.renders and finished.takes("refiner")
    assert families.families_with("refiner") == ("sdxl",)
    assert families.is_refiner("sdxl_refiner") and not families.is_refiner("sdxl") and not families.is_refiner(None)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="family 'sd4' is not supported; choose one of sd, sdxl, flux, sd3, flux2, flux2_klein"):
        get_family("sd4")
    assert families.find_family("sd4") is None and families.find_family(None) is None
    assert "family 'sd4'" in families.check_sampler("sd4", "euler", "normal")
    assert families.available_samplers("sd4") == ()


def test_detection_by_pipeline_class():
    for family in families.all_families():
        assert families.detect_family({"_class_name": family.pipeline_class}) == family.name
    assert families.detect_family({"_class_name": "WanPipeline"}) is None
    assert families.detect_family({}) is None


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from farm.workers.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("families")
    return {name: write_tiny_model(root / name, family=name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_detection_from_a_tiny_folder_round_trips(tiny_folders, name):
    from farm.registry import detect_family

    folder = tiny_folders[name]
    assert detect_family(folder) == name  # farm_model.json
    (folder / "farm_model.json").unlink()
    assert detect_family(folder) == name  # model_index.json alone, as a published folder
    assert families.detect_family(json.loads((folder / "model_index.json").read_text())) == name


@pytest.mark.parametrize("name", NAMES)
def test_a_loaded_tiny_folder_is_its_family(tiny_folders, name):
    import torch

    from farm.workers.pipelines import load_pipeline

    pipe = load_pipeline(tiny_folders[name], name, torch.device("cpu"), torch.float32)
    assert families.pipeline_family(pipe) == name


def test_capability_lookups_the_spec_uses():
    from farm import spec

    assert {name: spec.side_range(name) for name in families.renderer_names()} == {
        "sd": (64, 2048), "sdxl": (64, 4096), "flux": (64, 4096), "sd3": (64, 4096), "flux2": (64, 4096),
        "flux2_klein": (64, 4096), "flux_kontext": (64, 4096), "qwen_image": (64, 2048), "qwen_image_edit": (64, 2048)}
    assert {name: spec.side_multiple(name) for name in families.renderer_names()} == {
        "sd": 8, "sdxl": 8, "flux": 16, "sd3": 16, "flux2": 16, "flux2_klein": 16, "flux_kontext": 16, "qwen_image": 16,
        "qwen_image_edit": 16}
    assert spec.side_range("unknown") == (64, 2048)
    assert spec.FAMILY_ASPECT_RATIOS["sd"][0] == "512*512" and spec.FAMILY_ASPECT_RATIOS["flux"][0] == "1024*1024"
    assert spec.REFINER_FAMILIES == ("sdxl_refiner",)
    assert spec.side_multiple("flux") == 16 and spec.side_multiple("unknown") == 8
    assert spec.performance_modes("sd3")["quality"].scheduler == "normal"
    assert spec.performance_modes("sdxl")["quality"].scheduler == "karras"
    assert spec.performance_modes(None) == spec.performance_modes("sd")
    assert families.check_extras("flux", clip_skip=2, freeu=True, detail_guidance=1.0, inpainting=False) == [
        ("clip_skip", "flux models have no CLIP text encoder to skip layers of; leave clip_skip out"),
        ("freeu", "FreeU works on UNets (sd, sdxl), not on flux models"),
        ("detail_guidance", "detail guidance (perturbed attention) is not available for flux models"),
    ]
    assert families.check_extras("sdxl", clip_skip=2, freeu=True, detail_guidance=1.0, inpainting=True) == []
    assert get_family("flux").render_kwargs("blurry") == {}
    assert get_family("sd").render_kwargs("") == {"negative_prompt": None}


def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_request_check_imports_nothing_of_the_workers():
    out = _fresh("import sys, farm.spec; print(sorted(m for m in sys.modules if m.startswith('farm.workers')))")
    assert out == "[]"


def test_the_families_import_neither_torch_nor_diffusers():
    out = _fresh("import sys, farm.families; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    assert out == "[]"


def _farm_imports(path: Path) -> set[str]:
    """Every farm module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "farm" or name.startswith("farm.")}


def test_the_families_package_imports_only_itself():
    """No import circle with the spec (or anything above it): a family module
    may import other family modules and nothing else of farm."""
    for path in sorted((ROOT / "farm" / "families").glob("*.py")):
        outside = {name for name in _farm_imports(path) if not name.startswith("farm.families")}
        assert not outside, f"{path.name} imports {sorted(outside)}"
    assert "farm.spec" not in _fresh("import sys, farm.families; print(sorted(sys.modules))")


# A family name compared with a literal: `family == "sdxl"`, `"flux" != model.family`,
# `family in ("sd", "sdxl")`.
_FAMILY_BRANCH = re.compile(
    r"""\w*family\s*(?:==|!=)\s*["']|["']\s*(?:==|!=)\s*[\w.]*family\b|\w*family\s+(?:not\s+)?in\s+[(\[{]\s*["']""")


def test_the_family_branch_finder_finds_branches():
    for line in ('if family == "flux":', 'x = model.family != "sdxl"', 'if "sd3" == entry.family:',
                 'denoiser = a if family in ("sd", "sdxl") else b', 'if family not in ["flux"]:'):
        assert _FAMILY_BRANCH.search(line), line
    for line in ('if family == other.family:', 'family = get_family(name)', 'if family in families:'):
        assert not _FAMILY_BRANCH.search(line), line


def test_no_code_outside_the_family_modules_branches_on_a_family_name():
    offenders = []
    for folder in ("farm", "dashboard"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(ROOT / "farm" / "families"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _FAMILY_BRANCH.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "ask farm.families instead:\n" + "\n".join(offenders)
