"""`farm models add` checks a folder before registering it, imports a single
.safetensors checkpoint offline (or says how), and `farm models remove`
keeps finished jobs' history. Real tiny pipelines, the embedded database."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch

from farm.context import build_context
from farm.models import Job, ModelEntry
from tests.support.factories import make_job


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from farm.workers.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {"sd": write_tiny_model(root / "sd", family="sd", seed=0),
            "flux": write_tiny_model(root / "flux", family="flux", seed=0),
            "flux-other": write_tiny_model(root / "flux-other", family="flux", seed=1)}


def broken_copy(tiny_dirs, tmp_path, damage) -> str:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs["sd"], copy)
    damage(copy)
    return str(copy)


def registered(run) -> str:
    return run("models", "list").output


def test_a_whole_folder_registers(run, tiny_dirs):
    result = run("models", "add", "good", str(tiny_dirs["sd"]))
    assert result.exit_code == 0, result.output
    assert "good\tsd" in registered(run)


@pytest.mark.parametrize("damage, said", [
    (lambda d: [p.unlink() for p in (d / "unet").glob("*.safetensors")], "unet has no weights"),
    (lambda d: (d / "vae" / "config.json").unlink(), "vae lacks its config (config.json)"),
    (lambda d: (d / "model_index.json").write_text("{not json"), "model_index.json is not valid JSON"),
    (lambda d: (d / "unet" / "config.json").write_text("[1, 2"), "config.json is not valid JSON"),
    (lambda d: shutil.rmtree(d / "text_encoder"), "lacks the folder text_encoder/ that model_index.json names"),
    (lambda d: (d / "scheduler" / "scheduler_config.json").unlink(), "scheduler lacks its config (scheduler_config.json)"),
    (lambda d: [p.unlink() for p in (d / "tokenizer").iterdir()], "tokenizer lacks its config"),
])
def test_a_broken_folder_is_refused_naming_what_is_missing(run, tiny_dirs, tmp_path, damage, said):
    result = run("models", "add", "broken", broken_copy(tiny_dirs, tmp_path, damage))
    assert result.exit_code == 1 and said in result.output, result.output
    assert "Traceback" not in result.output and "not registered" in result.output
    assert "broken" not in registered(run)


def shard(folder, present: bool) -> None:
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    name = "diffusion_pytorch_model-00001-of-00001.safetensors"
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"conv_in.weight": name}}))
    if present:
        weights.rename(folder / "unet" / name)
    else:
        weights.unlink()


def test_sharded_weights_count_when_every_shard_is_there(run, tiny_dirs, tmp_path):
    assert run("models", "add", "sharded", broken_copy(tiny_dirs, tmp_path, lambda d: shard(d, True))).exit_code == 0
    missing = run("models", "add", "half", broken_copy(tiny_dirs, tmp_path / "b", lambda d: shard(d, False)))
    assert missing.exit_code == 1 and "lacks the weight shards diffusion_pytorch_model-00001-of-00001.safetensors" in missing.output


def transformer_checkpoint(folder, path):
    """A FLUX single-file checkpoint holding only the transformer (the usual
    shape of a published FLUX fine-tune), from a tiny pipeline's weights."""
    from diffusers import FluxTransformer2DModel

    state = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer").state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return state


def test_a_single_file_without_config_is_refused_with_the_commands(run, tiny_dirs, tmp_path):
    checkpoint = tmp_path / "fine-tune.safetensors"
    transformer_checkpoint(tiny_dirs["flux"], checkpoint)
    result = run("models", "add", "ft", str(checkpoint), "--family", "flux")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"farm models add ft {checkpoint} --config DIFFUSERS_FOLDER" in result.output
    assert f"FluxPipeline.from_single_file('{checkpoint}').save_pretrained('{tmp_path / 'fine-tune'}')" in result.output
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"\x80\x04")
    result = run("models", "add", "old", str(pickled))
    assert result.exit_code == 1 and "pickled checkpoint" in result.output
    assert "ft" not in registered(run) and "old" not in registered(run)


def test_a_single_file_is_imported_offline_with_a_config_folder(run, tiny_dirs, tmp_path, sqlite_settings):
    # The checkpoint's transformer differs from the config folder's (another
    # seed): the import must keep the checkpoint's weights and take only the
    # components it lacks from the folder.
    checkpoint = tmp_path / "fine-tune.safetensors"
    wanted = transformer_checkpoint(tiny_dirs["flux-other"], checkpoint)
    result = run("models", "add", "ft", str(checkpoint), "--config", str(tiny_dirs["flux"]))
    assert result.exit_code == 0, result.output
    target = sqlite_settings.resolved_model_cache / "ft"
    assert f"registered ft (flux" in result.output and str(target) in result.output
    from diffusers import FluxTransformer2DModel

    imported = FluxTransformer2DModel.from_pretrained(target, subfolder="transformer").state_dict()
    assert all(torch.equal(imported[k], wanted[k]) for k in wanted)
    from farm.modelcheck import folder_problems

    assert folder_problems(target) == []


def test_a_file_that_is_no_checkpoint_is_refused_clearly(run, tiny_dirs, tmp_path, sqlite_settings):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    result = run("models", "add", "bad", str(garbage), "--config", str(tiny_dirs["flux"]))
    assert result.exit_code == 1 and "not a readable .safetensors file" in result.output, result.output
    assert "Traceback" not in result.output and "bad" not in registered(run)
    assert not (sqlite_settings.resolved_model_cache / "bad").exists()


def test_remove_refuses_while_jobs_wait_and_force_cancels_them(run, sqlite_settings):
    ctx = build_context(sqlite_settings)
    done = make_job(ctx, model="m-old", status="succeeded")
    waiting = make_job(ctx, model="m-old")
    refused = run("models", "remove", "m-old")
    assert refused.exit_code == 1 and "1 unfinished job(s)" in refused.output and "--force" in refused.output
    assert "m-old" in registered(run)
    removed = run("models", "remove", "m-old", "--force")
    assert removed.exit_code == 0 and "canceled 1 unfinished job(s)" in removed.output, removed.output
    assert "m-old" not in registered(run)
    with ctx.db.session() as session:
        assert session.get(ModelEntry, "m-old") is None
        assert (session.get(Job, done).status, session.get(Job, done).model_id) == ("succeeded", "m-old")
        assert session.get(Job, waiting).status == "canceled"
    missing = run("models", "remove", "m-old")
    assert missing.exit_code == 1 and "no model 'm-old'" in missing.output


@pytest.fixture()
def hub(tiny_dirs):
    """A local fake hub (tests/support/fake_hub.py) with a whole tiny SD and one without unet weights."""
    from tests.support.fake_hub import FakeHub

    whole = tiny_dirs["sd"]
    files = {str(p.relative_to(whole)): p.read_bytes() for p in whole.rglob("*") if p.is_file()}
    broken = {path: data for path, data in files.items() if not path.startswith("unet/") or path.endswith(".json")}
    with FakeHub() as fake:
        fake.add_commit("studio/whole", files)
        fake.add_commit("studio/broken", broken)
        yield fake


def test_pull_checks_the_download_as_add_checks_a_folder(run, hub, sqlite_settings):
    assert run("models", "add", "whole", "studio/whole", "--family", "sd").exit_code == 0
    assert run("models", "add", "broken", "studio/broken", "--family", "sd").exit_code == 0
    pulled = run("models", "pull", "whole", "--endpoint", hub.url)
    assert pulled.exit_code == 0, pulled.output
    refused = run("models", "pull", "broken", "--endpoint", hub.url)
    assert refused.exit_code == 1 and "unet has no weights" in refused.output and "nothing recorded" in refused.output
    with build_context(sqlite_settings).db.session() as session:
        assert session.get(ModelEntry, "whole").weights_sha256 is not None
        assert session.get(ModelEntry, "broken").weights_sha256 is None
