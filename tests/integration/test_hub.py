"""farm.hub against a local fake hub (tests/support/fake_hub.py).

Nothing here reaches a real model hub: every download passes the fake hub's
loopback URL as ``endpoint``, and the ``loopback_only`` fixture makes any
connection or DNS lookup for another host fail the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import socket
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from farm.hub import (
    DownloadResult,
    ModelDownloadError,
    ModelIntegrityError,
    download_model,
    hash_weights,
    is_hub_repo_id,
    sha256_file,
    verify_model,
    weights_fingerprint,
)
from tests.support.fake_hub import FakeHub

REPO = "farm-test/tiny-diffusion"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MiB = 1024 * 1024

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _install_loopback_guard(patch) -> None:
    """Make connections and DNS lookups for anything but loopback fail."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in _LOOPBACK:
                raise AssertionError(f"test tried to connect to {address!r}, outside loopback")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOOPBACK and host is not None:
            raise AssertionError(f"test tried to resolve {host!r}, outside loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    patch(socket.socket, "connect", connect)
    patch(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _install_loopback_guard(monkeypatch.setattr)
    yield


def _random(n: int, seed: int) -> bytes:
    # Deterministic "weights": random-looking bytes, not a real model.
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


@pytest.fixture
def model_dir(tmp_path) -> Path:
    root = tmp_path / "source-model"
    files = {
        "model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0"}).encode(),
        "README.md": b"# tiny test model\n",
        "scheduler/scheduler_config.json": json.dumps({"_class_name": "EulerDiscreteScheduler"}).encode(),
        "unet/config.json": json.dumps({"sample_size": 8}).encode(),
        "unet/diffusion_pytorch_model.safetensors": _random(96 * 1024, 1),
        "vae/diffusion_pytorch_model.safetensors": _random(40 * 1024, 2),
        "text_encoder/model.safetensors": _random(64 * 1024, 3),
        "text_encoder/config.json": json.dumps({"hidden_size": 8}).encode(),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def hub(model_dir, monkeypatch):
    # A small page size makes snapshot_download follow the tree's Link pagination.
    fake = FakeHub(page_size=3).start()
    fake.add_commit(REPO, model_dir, commit=COMMIT, refs=("main", "v1.0"))
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.stop()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "model-cache"


def _expected_weights(model_dir: Path) -> dict[str, str]:
    return {
        p.relative_to(model_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.rglob("*.safetensors"))
    }


def _blob(cache: Path, repo: str, sha256: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--")) / "blobs" / sha256


# --------------------------------------------------------------------------
# download, cache, revisions


def test_download_returns_snapshot_with_sha256_of_each_weights_file(hub, model_dir, cache):
    result = download_model(REPO, cache_dir=cache, endpoint=hub.url)

    assert isinstance(result, DownloadResult)
    assert result.revision == COMMIT
    assert result.path == cache / "models--farm-test--tiny-diffusion" / "snapshots" / COMMIT
    expected = _expected_weights(model_dir)
    assert result.files == expected
    lines = "".join(f"{path}:{expected[path]}\n" for path in sorted(expected))
    assert result.weights_sha256 == hashlib.sha256(lines.encode()).hexdigest()
    assert result.weights_sha256 == weights_fingerprint(result.files)
    # Every file of the repo is in the snapshot, byte for byte.
    for source in model_dir.rglob("*"):
        if source.is_file():
            assert (result.path / source.relative_to(model_dir)).read_bytes() == source.read_bytes()
    verify_model(result.path, result.files)
    assert hash_weights(result.path) == result.files
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.revision = "x"  # type: ignore[misc]
    # Weights travelled as LFS files: their blobs are named by sha256.
    for sha in expected.values():
        assert _blob(cache, REPO, sha).is_file()


def test_second_download_is_served_from_the_cache(hub, cache):
    first = download_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert len(hub.content_gets()) == 8
    hub.reset_log()

    second = download_model(REPO, cache_dir=cache, endpoint=hub.url)

    assert second == first
    assert hub.content_gets() == []
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # not even a HEAD
    # Only the two metadata calls remain (revision resolution, model info).
    assert [r.path for r in hub.requests] == [
        f"/api/models/{REPO}",  # no revision asked: the default branch
        f"/api/models/{REPO}/revision/{COMMIT}",
    ]


def _download_in_child(args):
    endpoint, cache = args
    _install_loopback_guard(setattr)
    result = download_model(REPO, cache_dir=cache, endpoint=endpoint)
    return result.revision, result.files, result.weights_sha256


def test_workers_of_a_machine_share_one_cache(hub, cache):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        results = list(pool.map(_download_in_child, [(hub.url, str(cache))] * 2))

    assert results[0] == results[1]
    assert results[0][0] == COMMIT
    # Each file crossed the wire once although two processes pulled the model.
    paths = [r.path for r in hub.content_gets()]
    assert len(paths) == len(set(paths)) == 8


def test_pinned_revision_resolves_to_its_commit(hub, model_dir, cache):
    changed = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    changed["unet/diffusion_pytorch_model.safetensors"] = _random(96 * 1024, 99)
    new_commit = hub.add_commit(REPO, changed, refs=("main",))
    assert new_commit != COMMIT

    by_tag = download_model(REPO, revision="v1.0", cache_dir=cache, endpoint=hub.url)
    by_hash = download_model(REPO, revision=COMMIT, cache_dir=cache, endpoint=hub.url)
    latest = download_model(REPO, cache_dir=cache, endpoint=hub.url)

    assert by_tag.revision == by_hash.revision == COMMIT
    assert by_tag.files == by_hash.files == _expected_weights(model_dir)
    assert latest.revision == new_commit
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert latest.files[unet] == hashlib.sha256(changed[unet]).hexdigest() != by_tag.files[unet]
    assert latest.weights_sha256 != by_tag.weights_sha256
    refs = cache / "models--farm-test--tiny-diffusion" / "refs"
    assert (refs / "v1.0").read_text() == COMMIT
    assert (refs / "main").read_text() == new_commit


def test_allow_patterns_limit_what_is_fetched(hub, model_dir, cache):
    result = download_model(REPO, cache_dir=cache, endpoint=hub.url, allow_patterns=["*.json", "unet/*"])

    expected = {k: v for k, v in _expected_weights(model_dir).items() if k.startswith("unet/")}
    assert result.files == expected
    assert not (result.path / "text_encoder" / "model.safetensors").exists()
    assert not [r for r in hub.content_gets() if r.path.endswith(".safetensors") and "/unet/" not in r.path]


# --------------------------------------------------------------------------
# errors


def test_unknown_repo_gives_model_download_error(hub, cache):
    with pytest.raises(ModelDownloadError) as info:
        download_model("farm-test/no-such-model", cache_dir=cache, endpoint=hub.url)
    assert not isinstance(info.value, ModelIntegrityError)
    message = str(info.value)
    assert "farm-test/no-such-model" in message and "not found" in message
    assert "repo id" in message  # says what to fix


def test_unknown_revision_gives_model_download_error(hub, cache):
    with pytest.raises(ModelDownloadError, match="revision 'v9.9' does not exist"):
        download_model(REPO, revision="v9.9", cache_dir=cache, endpoint=hub.url)


def test_malformed_repo_id_gives_model_download_error(hub, cache):
    with pytest.raises(ModelDownloadError, match="owner/name"):
        download_model("not a repo", cache_dir=cache, endpoint=hub.url)


def test_private_repo_needs_the_right_token(hub, model_dir, cache):
    hub.add_commit("farm-test/private", model_dir, token="hf_right")

    with pytest.raises(ModelDownloadError, match="HF_TOKEN"):
        download_model("farm-test/private", cache_dir=cache, endpoint=hub.url, token="hf_wrong")
    result = download_model("farm-test/private", cache_dir=cache, endpoint=hub.url, token="hf_right")
    assert result.files == _expected_weights(model_dir)


def test_unreachable_hub_and_empty_cache_gives_model_download_error(hub, cache):
    url = hub.url
    hub.stop()
    with pytest.raises(ModelDownloadError, match="cannot be reached"):
        download_model(REPO, cache_dir=cache, endpoint=url)


def test_unreachable_hub_uses_a_complete_cached_snapshot(hub, cache, caplog):
    online = download_model(REPO, revision="v1.0", cache_dir=cache, endpoint=hub.url)
    url = hub.url
    hub.stop()

    with caplog.at_level("WARNING", logger="farm.hub"):
        offline = download_model(REPO, revision="v1.0", cache_dir=cache, endpoint=url)
    assert offline == online
    assert "unreachable" in caplog.text
    # A revision that was never pulled cannot be resolved offline.
    with pytest.raises(ModelDownloadError, match="cannot be reached"):
        download_model(REPO, revision="other-branch", cache_dir=cache, endpoint=url)


def test_offline_mode_uses_cache_or_says_to_unset_it(hub, cache, monkeypatch):
    online = download_model(REPO, cache_dir=cache, endpoint=hub.url)
    hub.reset_log()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    assert download_model(REPO, cache_dir=cache, endpoint=hub.url) == online
    with pytest.raises(ModelDownloadError, match="HF_HUB_OFFLINE"):
        download_model(REPO, cache_dir=cache / "elsewhere", endpoint=hub.url)
    assert hub.requests == []


# --------------------------------------------------------------------------
# integrity


def test_wrong_lfs_sha256_in_hub_metadata_gives_integrity_error(hub, model_dir, cache):
    path = "unet/diffusion_pytorch_model.safetensors"
    advertised = hub.corrupt_lfs_metadata(REPO, path)
    real = hashlib.sha256((model_dir / path).read_bytes()).hexdigest()

    with pytest.raises(ModelIntegrityError) as info:
        download_model(REPO, cache_dir=cache, endpoint=hub.url)

    error = info.value
    assert isinstance(error, ModelDownloadError)
    assert (error.path, error.expected, error.actual) == (path, advertised, real)
    assert path in str(error) and advertised in str(error) and real in str(error)
    # The bad file is gone from the cache (snapshot entry and blob).
    snapshot = cache / "models--farm-test--tiny-diffusion" / "snapshots" / COMMIT
    assert not os.path.lexists(snapshot / path)
    assert not _blob(cache, REPO, advertised).exists()
    assert (snapshot / "vae" / "diffusion_pytorch_model.safetensors").is_file()  # good files stay

    hub.repair(REPO, path)
    hub.reset_log()
    result = download_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert result.files[path] == real
    assert [r.path.rsplit("/resolve/" + COMMIT + "/", 1)[-1] for r in hub.content_gets()] == [path]


def test_corrupt_content_gives_integrity_error(hub, model_dir, cache):
    path = "text_encoder/model.safetensors"
    hub.corrupt_content(REPO, path)
    real = hashlib.sha256((model_dir / path).read_bytes()).hexdigest()

    with pytest.raises(ModelIntegrityError) as info:
        download_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert info.value.path == path
    assert info.value.expected == real
    assert info.value.actual == hashlib.sha256(hub.file(REPO, path).body).hexdigest()


def test_corrupt_small_file_is_caught_by_its_git_blob_id(hub, cache):
    hub.corrupt_content(REPO, "model_index.json")
    with pytest.raises(ModelIntegrityError, match="git-sha1") as info:
        download_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert info.value.path == "model_index.json"


def test_verify_model_recomputes_hashes(hub, cache, tmp_path):
    result = download_model(REPO, cache_dir=cache, endpoint=hub.url)
    verify_model(result.path, result.files)

    copy = tmp_path / "copy"
    for rel in result.files:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((result.path / rel).read_bytes())
    verify_model(copy, result.files)

    target = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as info:
        verify_model(copy, result.files)
    assert info.value.path == "vae/diffusion_pytorch_model.safetensors"
    assert info.value.actual == sha256_file(target)

    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        verify_model(copy, result.files)


# --------------------------------------------------------------------------
# resume


def test_dropped_connection_is_resumed_with_a_range_request(hub, cache):
    # huggingface_hub 2.4 resumes inside one download: when the connection
    # drops mid-file, http_get retries with "Range: bytes=<written>-". It
    # writes in 10 MiB chunks, so the file must be larger than that for bytes
    # to reach the disk before the drop.
    repo = "farm-test/big-weights"
    weights = _random(12 * MiB, 7)
    hub.add_commit(repo, {"model_index.json": b"{}", "unet/diffusion_pytorch_model.safetensors": weights})
    hub.interrupt_next_get(repo, "unet/diffusion_pytorch_model.safetensors", after_bytes=11 * MiB)

    result = download_model(repo, cache_dir=cache, endpoint=hub.url)

    assert result.files == {"unet/diffusion_pytorch_model.safetensors": hashlib.sha256(weights).hexdigest()}
    gets = hub.content_gets("unet/diffusion_pytorch_model.safetensors")
    assert [g.status for g in gets] == [200, 206]
    assert "range" not in gets[0].headers and gets[0].body_bytes == 11 * MiB
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 11 * MiB
    assert gets[1].body_bytes == len(weights) - start


def test_stale_incomplete_file_from_a_dead_process_does_not_corrupt(hub, model_dir, cache):
    # A worker killed mid-download may leave a partial blob behind. In 2.4
    # each download writes to a process-unique "<etag>.<random>.incomplete"
    # file that is deleted on failure, so a partial file is never resumed by
    # another process: the download starts over (no Range) and is correct.
    path = "unet/diffusion_pytorch_model.safetensors"
    real = (model_dir / path).read_bytes()
    sha = hashlib.sha256(real).hexdigest()
    blobs = cache / "models--farm-test--tiny-diffusion" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * (len(real) // 2))
    (blobs / f"{sha}.deadbeef.incomplete").write_bytes(real[: len(real) // 2])

    result = download_model(REPO, cache_dir=cache, endpoint=hub.url)

    assert result.files[path] == sha
    (get,) = hub.content_gets(path)
    assert get.status == 200 and "range" not in get.headers


# --------------------------------------------------------------------------
# repo ids and the loopback guard


def test_is_hub_repo_id(tmp_path, monkeypatch):
    assert is_hub_repo_id("stabilityai/stable-diffusion-xl-base-1.0")
    assert is_hub_repo_id("owner/name_1.5")
    for source in ("gpt2", "a/b/c", "/abs/path", "./rel/dir", "~/models/x", "owner/", "/name",
                   "own er/name", "owner/na--me", "owner/..", "owner/name.", ""):
        assert not is_hub_repo_id(source), source
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sd15").mkdir(parents=True)
    assert not is_hub_repo_id("models/sd15")  # an existing local directory wins
    assert is_hub_repo_id("models/sd21")


def test_loopback_guard_refuses_other_hosts():
    with pytest.raises(AssertionError, match="outside loopback"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(AssertionError, match="outside loopback"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)


def test_integrity_error_also_takes_a_plain_message():
    error = ModelIntegrityError("model sdxl: downloaded weights hash a differs from the registered b")
    assert isinstance(error, ModelDownloadError)
    assert str(error).startswith("model sdxl:")
    assert error.path is None and error.mismatches == []
