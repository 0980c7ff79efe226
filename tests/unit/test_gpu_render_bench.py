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


def test_the_script_prints_farm_and_direct_figures_per_variant_at_tiny_scale():
    variants = ("16bit", "int8", "nf4", "gguf-q4_0")
    done = subprocess.run([sys.executable, str(SCRIPT), "--scale", "tiny", "--repeat", "1", "--device", "cpu",
                           *(f"--variant={v}" for v in variants)], capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(done.stdout)
    for arch in ("sdxl", "flux"):
        results = report["results"][arch]
        assert set(results) == set(variants)
        # bitsandbytes has no CPU kernels: listed with the reason, not measured.
        assert results["nf4"] == {"skipped": "nf4 needs a CUDA GPU (bitsandbytes has no cpu kernels for it); this device is cpu"}
        for variant in ("16bit", "int8", "gguf-q4_0"):
            result = results[variant]
            assert result["direct_s_per_image"] > 0 and result["farm_s_per_image"] > 0
            assert result["farm_over_direct"] == round(result["farm_s_per_image"] / result["direct_s_per_image"], 3)
            assert result["load_s"] > 0 and result["disk_gb"] > 0
            assert result["quantization"] == (None if variant == "16bit" else variant)
        # The quantized weights are smaller in memory and on disk than the fp32 ones.
        for variant in ("int8", "gguf-q4_0"):
            assert results[variant]["weights_gib"] < results["16bit"]["weights_gib"]
            assert results[variant]["disk_gb"] < results["16bit"]["disk_gb"]


def test_full_scale_refuses_to_run_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: full scale runs here")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "need a CUDA device" in done.stderr
