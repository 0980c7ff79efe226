"""Quantized variants (issue 22): `farm models quantize` writes an int8 or GGUF
copy of a tiny FLUX that loads and renders on the CPU, the registry keeps each
variant's own VRAM and quantization, nf4 is refused on a CPU with a clear
error, and a bare base name never picks a quantized variant. Real tiny
pipelines, real torchao and gguf, the embedded database."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from farm.context import build_context
from farm.models import ModelEntry
from farm.quantization import QuantizationError


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from farm.workers.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "flux", family="flux", seed=0)


def entry(sqlite_settings, model_id) -> ModelEntry:
    ctx = build_context(sqlite_settings)
    with ctx.db.session() as session:
        row = session.get(ModelEntry, model_id)
        session.expunge_all()
        return row


def render(folder, quantization=None, seed=3):
    from farm.workers.pipelines import RenderParams, load_pipeline, render

    pipe = load_pipeline(folder, "flux", torch.device("cpu"), torch.float32, quantization)
    params = RenderParams(prompt="a lighthouse", negative_prompt="", width=64, height=64, steps=2, guidance_scale=3.5,
                          sampler="euler", scheduler="normal", seed=seed)
    return pipe, render(pipe, params)[0]


@pytest.mark.parametrize("fmt, library", [("int8", "torchao"), ("gguf-q8_0", "gguf")])
def test_quantize_writes_a_variant_that_renders_differently_and_weighs_less(run, sqlite_settings, tiny_flux, tmp_path,
                                                                            fmt, library):
    from farm.workers.pipelines import estimate_vram_gb

    assert run("models", "add", "flux", str(tiny_flux)).exit_code == 0
    result = run("models", "quantize", "flux", "--format", fmt, "--id", f"flux-{fmt}", "--out", str(tmp_path / "q"))
    assert result.exit_code == 0, result.output
    variant = entry(sqlite_settings, f"flux-{fmt}")
    base = entry(sqlite_settings, "flux")
    assert (variant.base, variant.variant) == ("flux", fmt)
    assert variant.quantization["format"] == fmt and variant.quantization["library"] == library
    assert not variant.quantization["at_load"]
    # Its own VRAM, measured from its quantized files: smaller than the fp32 base's.
    assert variant.vram_gb < base.vram_gb
    assert f"flux-{fmt}\tflux\tflux:{fmt}\t{fmt} (" in run("models", "list").output

    full_pipe, full = render(tiny_flux)
    pipe, image = render(variant.source, variant.quantization)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # an image, not a blank
    assert not np.array_equal(np.asarray(image), np.asarray(full))  # quantized weights render differently
    assert estimate_vram_gb(pipe) < estimate_vram_gb(full_pipe)


def test_int8_variant_quantizes_the_transformer_and_t5(run, sqlite_settings, tiny_flux, tmp_path):
    run("models", "add", "flux", str(tiny_flux))
    assert run("models", "quantize", "flux", "--format", "int8", "--id", "flux-int8",
               "--out", str(tmp_path / "q")).exit_code == 0
    record = entry(sqlite_settings, "flux-int8").quantization
    assert record["components"] == ["text_encoder_2", "transformer"]
    assert record["config"]["transformer"]["quant_method"] == "torchao"
    pipe, _ = render(tmp_path / "q", record)
    assert type(pipe.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == "Int8Tensor"
    # The untouched components are links to the base's files, not copies.
    assert (tmp_path / "q" / "vae" / "diffusion_pytorch_model.safetensors").stat().st_ino == \
        (tiny_flux / "vae" / "diffusion_pytorch_model.safetensors").stat().st_ino


def test_nf4_registers_quantized_at_load_with_an_estimated_vram_and_refuses_the_cpu(run, sqlite_settings, tiny_flux):
    assert run("models", "add", "flux", str(tiny_flux)).exit_code == 0
    result = run("models", "add", "flux-nf4", str(tiny_flux), "--quantize", "nf4")
    assert result.exit_code == 0, result.output
    assert "nf4 needs a CUDA GPU" in result.output
    variant, base = entry(sqlite_settings, "flux-nf4"), entry(sqlite_settings, "flux")
    assert variant.quantization == {"format": "nf4", "library": "bitsandbytes", "at_load": True, "config": None,
                                    "components": ["transformer", "text_encoder_2"]}
    assert (variant.base, variant.variant, variant.source) == ("flux", "nf4", base.source)
    # Estimated from the bits per weight: the quantized components at 4.127 of the 32 bits they hold on
    # disk, the others in 16-bit, against the base measured at its fp32 files.
    assert variant.vram_gb < base.vram_gb / 2
    with pytest.raises(QuantizationError, match="nf4 needs a CUDA GPU"):
        render(tiny_flux, variant.quantization)


def test_a_cuda_only_format_cannot_be_written_on_files_here(run, tiny_flux, tmp_path):
    run("models", "add", "flux", str(tiny_flux))
    result = run("models", "quantize", "flux", "--format", "nf4", "--id", "flux-nf4")
    # Registered as quantized at load instead: the worker with CUDA quantizes it.
    assert result.exit_code == 0 and "quantized nf4" in result.output and "needs a CUDA GPU" in result.output


def test_a_prequantized_folder_registers_as_its_format(run, sqlite_settings, tiny_flux, tmp_path):
    from farm.workers.quantize import quantize_folder

    quantize_folder(tiny_flux, tmp_path / "q", "int8", "flux")
    result = run("models", "add", "flux-int8", str(tmp_path / "q"))
    assert result.exit_code == 0, result.output
    assert entry(sqlite_settings, "flux-int8").quantization["format"] == "int8"
    assert "--quantize" in run("models", "add", "again", str(tmp_path / "q"), "--quantize", "int8").output


def test_a_gguf_file_imports_with_the_components_of_a_folder(run, sqlite_settings, tiny_flux, tmp_path):
    from farm.workers.quantize import quantize_folder

    quantize_folder(tiny_flux, tmp_path / "q", "gguf-q4_0", "flux")
    file = tmp_path / "flux-q4.gguf"
    (tmp_path / "q" / "transformer" / "diffusion_pytorch_model.gguf").rename(file)
    refused = run("models", "add", "flux-q4", str(file))
    assert refused.exit_code == 1 and "give --config" in refused.output
    result = run("models", "add", "flux-q4", str(file), "--config", str(tiny_flux))
    assert result.exit_code == 0, result.output
    variant = entry(sqlite_settings, "flux-q4")
    assert variant.quantization["format"] == "gguf" and variant.variant == "gguf"
    _, image = render(variant.source, variant.quantization)
    assert image.size == (64, 64)


def test_a_bare_base_name_never_picks_a_quantized_variant(run, sqlite_settings, tiny_flux, tmp_path):
    from farm.registry import model_infos
    from farm.spec import RequestError, parse_request, resolve_request

    run("models", "add", "flux-int8", str(tiny_flux), "--quantize", "int8", "--base", "flux", "--variant", "int8")
    ctx = build_context(sqlite_settings)
    with ctx.db.session() as session:
        infos = model_infos(session)
    assert infos["flux-int8"].quantized == "int8"
    with pytest.raises(RequestError) as refused:
        resolve_request(parse_request({"prompt": "x", "model": "flux"}), infos, sqlite_settings)
    assert "only as quantized variants (int8)" in str(refused.value.problems)
    named = resolve_request(parse_request({"prompt": "x", "model": "flux", "variant": "int8"}), infos, sqlite_settings)
    assert named.model_id == "flux-int8"
    assert resolve_request(parse_request({"prompt": "x", "model": "flux-int8"}), infos, sqlite_settings).model_id == "flux-int8"


def test_unknown_quantization_in_a_folder_is_refused(run, tiny_flux, tmp_path):
    import shutil

    copy = tmp_path / "odd"
    shutil.copytree(tiny_flux, copy)
    config = json.loads((copy / "transformer" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (copy / "transformer" / "config.json").write_text(json.dumps(config))
    result = run("models", "add", "odd", str(copy))
    assert result.exit_code == 1 and "'awq'" in result.output and "Traceback" not in result.output


def test_the_tiny_builder_writes_a_quantized_variant_that_registers_as_one(run, sqlite_settings, tmp_path):
    result = run("models", "tiny", str(tmp_path / "q"), "--family", "flux", "--quantize", "gguf-q8_0")
    assert result.exit_code == 0 and "quantized gguf-q8_0" in result.output, result.output
    assert list((tmp_path / "q" / "transformer").glob("*.gguf"))
    assert run("models", "add", "flux-gguf-q8_0", str(tmp_path / "q")).exit_code == 0
    variant = entry(sqlite_settings, "flux-gguf-q8_0")
    assert (variant.base, variant.variant, variant.quantization["format"]) == ("flux", "gguf-q8_0", "gguf-q8_0")


@pytest.mark.parametrize("family", ["flux2", "flux2_klein"])
def test_flux2_variants_quantize_the_transformer_and_the_llm_text_encoder(tmp_path, family):
    from farm.workers.pipelines import RenderParams, estimate_vram_gb, load_pipeline, render
    from farm.workers.quantize import quantize_folder
    from farm.workers.tiny import write_tiny_model

    plain = write_tiny_model(tmp_path / "plain", family=family)
    record = quantize_folder(plain, tmp_path / "q", "int8", family)
    assert record["components"] == ["text_encoder", "transformer"]
    cpu = torch.device("cpu")
    pipe, base = load_pipeline(tmp_path / "q", family, cpu, torch.float32, record), load_pipeline(plain, family, cpu, torch.float32)
    assert estimate_vram_gb(pipe) < estimate_vram_gb(base)
    params = RenderParams(prompt="a lighthouse", negative_prompt="", width=64, height=64, steps=2, guidance_scale=4.0,
                          sampler="euler", scheduler="normal", seed=1)
    assert render(pipe, params)[0].size == (64, 64)


def test_the_api_lists_each_models_quantization_and_refuses_a_base_only_quantized(run, sqlite_settings, tiny_flux):
    from farm.api import create_app
    from farm.auth import create_user

    run("models", "add", "flux-nf4", str(tiny_flux), "--quantize", "nf4")
    ctx = build_context(sqlite_settings)
    with ctx.db.transaction() as session:
        _, token = create_user(session, "vera")
    client = create_app(ctx.settings, context=ctx).test_client()
    headers = {"Authorization": f"Bearer {token}"}
    models = {m["id"]: m for m in client.get("/api/v1/models", headers=headers).get_json()["models"]}
    nf4 = models["flux-nf4"]
    assert nf4["quantization"]["format"] == "nf4" and nf4["quantization"]["at_load"] is True
    assert nf4["variants"] == [{"id": "flux-nf4", "variant": "nf4", "default_steps": nf4["default_steps"],
                                "vram_gb": nf4["vram_gb"], "quantization": "nf4"}]
    refused = client.post("/api/v1/jobs", headers=headers, json={"prompt": "a cat", "model": "flux"})
    assert refused.status_code == 422
    assert "only as quantized variants (nf4)" in refused.get_data(as_text=True)


def test_every_family_loader_passes_the_quantization_extras_on():
    import inspect

    from farm.families import all_families

    for family in all_families():
        kinds = [p.kind for p in inspect.signature(family.load).parameters.values()]
        assert inspect.Parameter.VAR_KEYWORD in kinds, f"{family.name}'s load takes no **extras"
        assert set(family.quantized_components) and all(isinstance(c, str) for c in family.quantized_components)
