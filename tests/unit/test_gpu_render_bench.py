"""bench/gpu_render.py: the full-size architectures are the published ones, and the script runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.support.bench_scripts import BENCH, load_bench_script

SCRIPT = BENCH / "gpu_render.py"


def on_meta(factory):
    with torch.device("meta"):  # shapes only: no memory for 16 B parameters
        return factory()


def billions(module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e9, 3)


def test_full_size_pipelines_have_the_published_parameter_counts():
    bench = load_bench_script("gpu_render")
    sdxl, flux = bench.full_sdxl(on_meta), bench.full_flux(on_meta)
    # SDXL base 1.0: UNet 2.567 B, CLIP ViT-L 0.123 B, OpenCLIP bigG 0.695 B.
    assert (billions(sdxl.unet), billions(sdxl.text_encoder), billions(sdxl.text_encoder_2)) == (2.567, 0.123, 0.695)
    # FLUX.1 dev: transformer 11.901 B, T5-XXL encoder 4.762 B.
    assert (billions(flux.transformer), billions(flux.text_encoder_2)) == (11.901, 4.762)


def test_the_script_prints_farm_and_direct_figures_at_tiny_scale():
    done = subprocess.run([sys.executable, str(SCRIPT), "--scale", "tiny", "--repeat", "1"], capture_output=True,
                          text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    for arch in ("sdxl", "flux"):
        result = report["results"][arch]
        assert result["direct_s_per_image"] > 0 and result["farm_s_per_image"] > 0
        assert result["farm_over_direct"] == round(result["farm_s_per_image"] / result["direct_s_per_image"], 3)


def test_full_scale_refuses_to_run_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: full scale runs here")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "need a CUDA device" in done.stderr
