"""The command line on the embedded database: clear one-line errors, no tracebacks."""

from __future__ import annotations

def test_users_teams_and_share_weights(run):
    created = run("users", "create", "ana", "--team", "studio")
    assert created.exit_code == 0 and created.output.strip().splitlines()[-1].startswith("farm_")
    assert "user ana now has share weight 2" in run("shares", "set", "2", "--user", "ana").output
    assert "team studio now has share weight 0.5" in run("shares", "set", "0.5", "--team", "studio").output
    missing = run("shares", "set", "2", "--user", "nobody")
    assert missing.exit_code == 1 and "no user named 'nobody'" in missing.output and "Traceback" not in missing.output
    both = run("shares", "set", "2", "--user", "ana", "--team", "studio")
    assert both.exit_code == 1 and "exactly one" in both.output
    again = run("users", "create", "ana")
    assert again.exit_code == 1 and "already exists" in again.output


def test_worker_commands_say_what_is_wrong(run):
    assert "no workers have registered" in run("workers", "list").output
    result = run("workers", "drain", "gpu9")
    assert result.exit_code == 1 and "no worker 'gpu9'" in result.output


def test_models_add_refuses_bad_sources(run, tmp_path):
    result = run("models", "add", "x", str(tmp_path / "missing-dir"))
    assert result.exit_code == 1 and "neither a local directory nor a hub repo id" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("models", "add", "y", str(empty))
    assert result.exit_code == 1 and "has no model_index.json" in result.output


def test_quota_commands(run):
    run("users", "create", "ana", "--team", "studio")
    out = run("quotas", "set", "--team", "studio", "--images-per-day", "50", "--max-steps", "40")
    assert out.exit_code == 0 and "images_per_day=50" in out.output and "gpu_seconds_per_month=unlimited" in out.output
    shown = run("quotas", "show", "--user", "ana")
    assert '"images_per_day": 50' in shown.output
    assert run("quotas", "set", "--user", "nobody").exit_code == 1


def test_campaign_submit_reports_unreachable_farm(run, tmp_path):
    spec = tmp_path / "c.json"
    spec.write_text('{"name": "x", "base": {"prompt": "y"}}')
    result = run("campaign", "submit", str(spec), "--api", "http://127.0.0.1:9", "--token", "t")
    assert result.exit_code == 1 and "cannot reach the farm" in result.output
    spec.write_text("{not json")
    result = run("campaign", "submit", str(spec), "--api", "http://127.0.0.1:9", "--token", "t")
    assert result.exit_code == 1 and "is not JSON" in result.output


def test_loras_and_variants_from_the_command_line(run, tmp_path):
    assert "no LoRAs registered" in run("loras", "list").output
    assert run("loras", "tiny", str(tmp_path / "lora"), "--family", "sd").exit_code == 0
    added = run("loras", "add", "ink", str(tmp_path / "lora"), "--family", "sd")
    assert added.exit_code == 0 and "registered LoRA ink (sd, sha256" in added.output
    assert "ink\tsd\t" in run("loras", "list").output
    again = run("loras", "add", "ink", str(tmp_path / "lora"), "--family", "sd")
    assert again.exit_code == 1 and "already registered" in again.output and "Traceback" not in again.output
    (tmp_path / "two").mkdir()
    assert "exactly one .safetensors" in run("loras", "add", "x", str(tmp_path / "two"), "--family", "sd").output

    assert run("models", "tiny", str(tmp_path / "schnell"), "--family", "flux", "--variant", "schnell").exit_code == 0
    bad = run("models", "tiny", str(tmp_path / "pro"), "--family", "flux", "--variant", "pro")
    assert bad.exit_code == 1 and "has no variant 'pro'" in bad.output
    added = run("models", "add", "flux-schnell", str(tmp_path / "schnell"))
    assert added.exit_code == 0 and "variant schnell of flux" in added.output
    assert "flux:schnell" in run("models", "list").output and "4 steps" in run("models", "list").output


def test_submit_names_the_field_to_fix_before_reaching_the_farm(run, tmp_path):
    """farm submit checks the request with the API's own model (farm.client): a
    field to fix is named even when no farm is listening."""
    result = run("submit", "a boat", "--steps", "0", "--api", "http://127.0.0.1:9", "--token", "t")
    assert result.exit_code == 1 and "HTTP 422" in result.output and "steps:" in result.output
    assert "Traceback" not in result.output
    assert "cannot reach the farm" in run("submit", "a boat", "--api", "http://127.0.0.1:9", "--token", "t").output
    spec = tmp_path / "c.yaml"
    spec.write_text("name: x\nbase: {prompt: y}\nmatrix: {colour: [red]}\n")
    refused = run("campaign", "submit", str(spec), "--api", "http://127.0.0.1:9", "--token", "t")
    assert refused.exit_code == 1 and "matrix.colour: not a generation field" in refused.output


def test_campaign_submit_shows_the_webhook_secret_farm_generated(run, sqlite_settings, tmp_path):
    """The signing secret is answered once, at submission: the CLI prints it."""
    from farm.api import create_app
    from farm.context import build_context
    from tests.support.api import served
    from tests.support.factories import ensure_model

    token = run("users", "create", "ana").output.strip().splitlines()[-1]
    settings = sqlite_settings.model_copy(update={"webhook_allow": "127.0.0.1"})
    ctx = build_context(settings)
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
    spec = tmp_path / "c.json"
    spec.write_text('{"name": "x", "base": {"prompt": "y", "width": 64, "height": 64}, "webhook": {"url": "http://127.0.0.1:9/hook"}}')
    with served(create_app(settings, context=ctx)) as base:
        result = run("campaign", "submit", str(spec), "--api", base, "--token", token)
    assert result.exit_code == 0, result.output
    queued, hook = result.output.strip().splitlines()
    assert queued.endswith("1 jobs queued") and hook.startswith("webhook http://127.0.0.1:9/hook: verify deliveries with the secret whsec_")
    ctx.db.dispose()


def test_workers_list_shows_models_in_host_memory(run, sqlite_settings):
    from farm.context import build_context
    from farm.events import LocalEvents
    from farm.models import Worker

    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        session.add(Worker(id="gpu-t", host="h", queue="q", device="cuda", device_name="L4", vram_total_gb=24,
                           vram_free_gb=17, max_pixels=10**7, loaded_models=[{"id": "sdxl-base", "vram_gb": 7.0}],
                           host_models=[{"id": "flux-dev", "gb": 23.8}], ram_cache_gb=64.0))
    assert "holds sdxl-base\tin host memory flux-dev\t" in run("workers", "list").output


def test_worker_ram_cache_option_reaches_the_settings(run, monkeypatch):
    import farm.workers.main

    seen = {}
    monkeypatch.setattr(farm.workers.main, "run_worker", lambda settings, **kwargs: seen.update(
        ram=settings.worker_ram_cache_gb, **kwargs))
    assert run("worker", "--name", "w-ram", "--vram-gb", "2", "--ram-cache-gb", "6.5").exit_code == 0
    assert seen == {"ram": 6.5, "name": "w-ram", "vram_gb": 2.0}
    refused = run("worker", "--ram-cache-gb", "-1")
    assert refused.exit_code == 2 and "--ram-cache-gb" in refused.output
