"""A worker loads a registered hub model through the real download code,
from a local hub-protocol server, and renders with it."""

from __future__ import annotations

import pytest

from farm.context import build_context
from farm.db import upgrade_database
from farm.events import LocalEvents
from farm.models import ModelEntry
from farm.registry import add_model
from farm.settings import Settings
from farm.workers.pipelines import RenderParams, render
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model
from tests.integration.test_hub import loopback_only  # noqa: F401  (autouse guard: no traffic off loopback)
from tests.support.fake_hub import FakeHub

pytestmark = pytest.mark.integration

COMMIT = "ab" * 20


def test_worker_downloads_verifies_and_renders_a_hub_model(tmp_path):
    source = write_tiny_model(tmp_path / "published", family="sd", seed=3)
    with FakeHub().start() as hub:
        hub.add_commit("studio/tiny-sd", source, commit=COMMIT)
        settings = Settings(home=tmp_path / "home", database_url=None, hub_endpoint=hub.url, device="cpu", worker_vram_gb=2)
        settings.home.mkdir()
        upgrade_database(settings.resolved_database_url)
        ctx = build_context(settings, events=LocalEvents())
        with ctx.db.transaction() as session:
            entry = add_model(session, "tiny-hub", "studio/tiny-sd", family="sd", revision="main", vram_gb=0.01)
        assert entry.weights_sha256 is None  # recorded on the first pull
        runtime = WorkerRuntime(ctx, name="w-hub")
        with ctx.db.session() as session:
            entry = session.get(ModelEntry, "tiny-hub")
        loaded, load_s = runtime.pipeline_for(entry)
        assert load_s > 0 and loaded.revision == COMMIT
        assert (settings.resolved_model_cache / "models--studio--tiny-sd").is_dir()
        images = render(loaded.pipe, RenderParams(prompt="x", negative_prompt="", width=64, height=64, steps=2,
                                                  guidance_scale=5.0, sampler="euler", scheduler="normal", seed=1))
        assert images[0].size == (64, 64)
        # Held now: asking again costs no load.
        assert runtime.pipeline_for(entry)[1] == 0.0

        # A registered fingerprint that the download does not match is refused.
        from farm.hub import ModelIntegrityError

        with ctx.db.transaction() as session:
            session.get(ModelEntry, "tiny-hub").weights_sha256 = "0" * 64
        with ctx.db.session() as session:
            tampered = session.get(ModelEntry, "tiny-hub")
        fresh = WorkerRuntime(ctx, name="w-hub-2")
        with pytest.raises(ModelIntegrityError, match="differs from the registered"):
            fresh.pipeline_for(tampered)
