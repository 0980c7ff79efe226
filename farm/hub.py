"""Model downloads from a Hugging Face Hub compatible endpoint.

This module is the only place in farm that talks to a model hub. It is a thin,
opinionated layer over :func:`huggingface_hub.snapshot_download`:

* the revision (branch, tag or commit) is resolved once to a commit hash and
  everything after that is pinned to that commit, so the files and the
  metadata they are checked against always belong to the same commit;
* downloads go to the standard huggingface_hub cache layout under
  ``cache_dir`` (``models--owner--name/{blobs,snapshots,refs}``). The cache is
  resumable and safe to share between the worker processes of one machine:
  huggingface_hub takes a file lock per blob and writes each download to a
  private temporary file that is renamed into place;
* every downloaded file is checked against what the hub says about it: the
  LFS sha256 for large files, the git blob id for small ones. A file that does
  not match is removed from the cache and :class:`ModelIntegrityError` is
  raised, so the next pull fetches it again;
* every weights file gets a sha256, and the model one fingerprint
  (:func:`weights_fingerprint`) that goes into the lineage record;
* when the hub cannot be reached (network down, ``HF_HUB_OFFLINE=1``) a model
  that is completely in the cache is still returned; otherwise every hub error
  becomes a :class:`ModelDownloadError` whose message says what to fix.

Requires huggingface_hub >= 2.4 (``HfApi.resolve_revision`` and the httpx2
transport).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import httpx2
from huggingface_hub import HfApi, constants as hf_constants, snapshot_download
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from huggingface_hub.utils import filter_repo_objects

logger = logging.getLogger(__name__)

__all__ = [
    "DownloadResult",
    "ModelDownloadError",
    "ModelIntegrityError",
    "WEIGHT_SUFFIXES",
    "download_model",
    "hash_weights",
    "is_hub_repo_id",
    "sha256_file",
    "verify_model",
    "weights_fingerprint",
]

#: File suffixes that count as weights (hashed into DownloadResult.files).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".gguf")

_CHUNK = 8 * 1024 * 1024
_HASH_THREADS = 4
# Hub repo names: word characters, '-' and '.', starting and ending with a
# word character, at most 96 characters per part; '--' and '..' are refused.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_REPO_ID_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_RECORD_DIR = ".farm-hashes"
_record_lock = threading.Lock()


class ModelDownloadError(RuntimeError):
    """A model could not be downloaded. The message says what to fix."""

    def __init__(self, message: str, *, repo_id: str | None = None, revision: str | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision


@dataclass(frozen=True)
class IntegrityMismatch:
    path: str
    algorithm: str  # "sha256" or "git-sha1"
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.path}: expected {self.algorithm} {self.expected}, got {self.actual}"


class ModelIntegrityError(ModelDownloadError):
    """Files on disk do not match their expected hashes.

    Built either from a plain message or from ``mismatches``; then ``path``,
    ``expected`` and ``actual`` describe the first mismatch (else they are
    None) and ``mismatches`` lists all of them.
    """

    def __init__(self, message: str | None = None, *, mismatches: Sequence[IntegrityMismatch] = (),
                 context: str = "", repo_id: str | None = None, revision: str | None = None):
        self.mismatches = list(mismatches)
        first = self.mismatches[0] if self.mismatches else None
        self.path = first.path if first else None
        self.expected = first.expected if first else None
        self.actual = first.actual if first else None
        if message is None:
            lines = "; ".join(str(m) for m in self.mismatches) or "no details"
            message = f"integrity check failed for {len(self.mismatches)} file(s): {lines}"
        if context:
            message = f"{message}. {context}"
        super().__init__(message, repo_id=repo_id, revision=revision)


@dataclass(frozen=True)
class DownloadResult:
    """A model snapshot in the local cache.

    ``path`` is the snapshot directory (load it with ``from_pretrained(path)``),
    ``revision`` the commit hash it was resolved to, ``files`` maps the
    relative path of every weights file to its sha256 (hex) and
    ``weights_sha256`` is :func:`weights_fingerprint` of ``files``.
    """

    path: Path
    revision: str
    files: dict[str, str] = field(default_factory=dict)
    weights_sha256: str = ""


# --------------------------------------------------------------------------
# hashing helpers


def sha256_file(path: str | Path) -> str:
    """sha256 (hex) of a file, read in chunks so size does not matter."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content (what the hub reports as blobId)."""
    size = path.stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(files: Mapping[str, str]) -> str:
    """One sha256 for a set of weights files.

    It is the sha256 of the UTF-8 text made of one ``"<path>:<sha256>\\n"``
    line per file, sorted by path (paths relative, '/'-separated).
    """
    text = "".join(f"{path}:{files[path]}\n" for path in sorted(files))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_weights(relpath: str) -> bool:
    return relpath.lower().endswith(WEIGHT_SUFFIXES)


def _walk_files(root: Path) -> list[str]:
    """Relative '/'-separated paths of the files under root (symlinks followed)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file():
                found.append(full.relative_to(root).as_posix())
    return sorted(found)


def _hash_many(paths: dict[str, Path], record: "_HashRecord | None" = None) -> dict[str, str]:
    """sha256 of several files, in a few threads (hashlib releases the GIL)."""
    result: dict[str, str] = {}
    todo: dict[str, Path] = {}
    for rel, full in paths.items():
        cached = record.lookup(full) if record is not None else None
        if cached is not None:
            result[rel] = cached
        else:
            todo[rel] = full
    if todo:
        workers = max(1, min(_HASH_THREADS, len(todo)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="farm-sha256") as pool:
            for rel, digest in zip(todo, pool.map(sha256_file, todo.values())):
                result[rel] = digest
    return result


def hash_weights(path: str | Path, *, allow_patterns: str | list[str] | None = None) -> dict[str, str]:
    """Relative path -> sha256 of every weights file under a local directory."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    selected = list(filter_repo_objects(_walk_files(root), allow_patterns=allow_patterns))
    return _hash_many({rel: root / rel for rel in selected if _is_weights(rel)})


def verify_model(path: str | Path, expected: Mapping[str, str]) -> None:
    """Recompute the sha256 of the files named in ``expected`` under ``path``.

    Raises :class:`ModelIntegrityError` when a file is missing or its hash
    differs. Files under ``path`` that ``expected`` does not name are ignored.
    """
    root = Path(path)
    mismatches: list[IntegrityMismatch] = []
    present: dict[str, Path] = {}
    for rel in sorted(expected):
        full = root / rel
        if full.is_file():
            present[rel] = full
        else:
            mismatches.append(IntegrityMismatch(rel, "sha256", expected[rel].lower(), "<missing>"))
    actual = _hash_many(present)
    for rel in sorted(present):
        if actual[rel] != expected[rel].lower():
            mismatches.append(IntegrityMismatch(rel, "sha256", expected[rel].lower(), actual[rel]))
    if mismatches:
        mismatches.sort(key=lambda m: m.path)
        raise ModelIntegrityError(mismatches=mismatches, context=f"model directory {root}")


def is_hub_repo_id(source: str) -> bool:
    """True for an ``owner/name`` hub repo id that is not an existing local path."""
    if not isinstance(source, str) or not _REPO_ID_RE.match(source):
        return False
    if "--" in source or ".." in source:
        return False
    return not os.path.exists(os.path.expanduser(source))


# --------------------------------------------------------------------------
# hash record: avoids re-hashing multi-GB blobs on every pull


class _HashRecord:
    """sha256 of cache blobs, keyed by their real path and stat.

    Kept as one small JSON file per repo under ``<cache_dir>/.farm-hashes``.
    An entry is reused only while the blob's size, mtime and inode are
    unchanged; a pull with a fresh hub check still compares the reused value
    with the hub's. :func:`verify_model` never uses it.
    """

    def __init__(self, cache_dir: Path, repo_id: str):
        self.file = cache_dir / _RECORD_DIR / (repo_id.replace("/", "--") + ".json")
        self.entries: dict[str, dict] = {}
        self.dirty = False
        try:
            data = json.loads(self.file.read_text())
            if isinstance(data, dict) and isinstance(data.get("blobs"), dict):
                self.entries = data["blobs"]
        except (OSError, ValueError):
            pass

    @staticmethod
    def _stamp(path: Path) -> tuple[str, list[int]] | None:
        try:
            real = os.path.realpath(path)
            st = os.stat(real)
        except OSError:
            return None
        return real, [st.st_size, st.st_mtime_ns, st.st_ino]

    def lookup(self, path: Path) -> str | None:
        stamp = self._stamp(path)
        if stamp is None:
            return None
        entry = self.entries.get(stamp[0])
        if entry and entry.get("stat") == stamp[1]:
            return entry.get("sha256")
        return None

    def remember(self, path: Path, sha256: str) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        if self.entries.get(stamp[0]) != {"stat": stamp[1], "sha256": sha256}:
            self.entries[stamp[0]] = {"stat": stamp[1], "sha256": sha256}
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        live = {real: entry for real, entry in self.entries.items() if os.path.exists(real)}
        try:
            with _record_lock:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.file.parent, suffix=".tmp")
                with os.fdopen(fd, "w") as handle:
                    json.dump({"version": 1, "blobs": live}, handle, indent=1, sort_keys=True)
                os.replace(tmp, self.file)
        except OSError as exc:  # best effort: only costs a re-hash next time
            logger.debug("could not write hash record %s: %s", self.file, exc)


# --------------------------------------------------------------------------
# download


def _library_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("farm")
    except Exception:  # noqa: BLE001 - not installed (running from a checkout)
        return None


def _hub_unreachable(exc: BaseException) -> bool:
    """Errors that mean 'the hub cannot be reached right now' (use the cache)."""
    if isinstance(exc, (httpx2.TransportError, OfflineModeIsEnabled)):
        return not isinstance(exc, httpx2.ProxyError)
    if isinstance(exc, HfHubHTTPError) and not isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        response = getattr(exc, "response", None)
        return response is not None and response.status_code >= 500
    return False


def _translate(exc: BaseException, repo_id: str, revision: str | None, where: str,
               offline_reason: BaseException | None) -> ModelDownloadError | None:
    """A ModelDownloadError with a what-to-fix message, or None if exc is not a hub error."""
    rev = revision or "main"
    if isinstance(exc, GatedRepoError):
        msg = (f"model repo '{repo_id}' on {where} is gated: accept its terms on {where}/{repo_id} with your "
               "account, then give the workers a token with read access (HF_TOKEN)")
    elif isinstance(exc, RepositoryNotFoundError):
        msg = (f"model repo '{repo_id}' was not found on {where}: check the repo id (owner/name); if the repo is "
               "private, give the workers a token with read access (HF_TOKEN)")
    elif isinstance(exc, RevisionNotFoundError):
        msg = (f"revision '{rev}' does not exist in model repo '{repo_id}' on {where}: use an existing branch, "
               "tag or full commit hash")
    elif isinstance(exc, RemoteEntryNotFoundError):
        msg = (f"a file of model repo '{repo_id}' (revision '{rev}') listed by {where} could not be fetched: "
               "the repo changed during the download; pull again")
    elif isinstance(exc, HFValidationError):
        msg = f"'{repo_id}' is not a valid hub repo id (expected owner/name): {exc}"
    elif isinstance(exc, (RevisionResolutionError, LocalEntryNotFoundError)) or (
        offline_reason is not None and isinstance(exc, OSError)
    ):
        cause = offline_reason or exc.__cause__ or exc
        if isinstance(cause, OfflineModeIsEnabled) or (offline_reason is None and hf_constants.HF_HUB_OFFLINE):
            fix = "unset HF_HUB_OFFLINE to allow downloads, or pull the model on a machine that is online"
        else:
            fix = (f"check the network and that HF_ENDPOINT/endpoint ({where}) is right, then pull again; "
                   "or copy the model into the cache")
        msg = (f"cannot download model repo '{repo_id}' (revision '{rev}'): {where} cannot be reached "
               f"({type(cause).__name__}) and the model is not complete in the local cache: {fix}")
    elif isinstance(exc, OfflineModeIsEnabled):
        msg = (f"cannot download model repo '{repo_id}': HF_HUB_OFFLINE is set and the model is not in the cache: "
               "unset HF_HUB_OFFLINE or pull it on a machine that is online")
    elif isinstance(exc, httpx2.ProxyError):
        msg = f"cannot download model repo '{repo_id}': the HTTP proxy refused the connection ({exc}): check HTTPS_PROXY/HTTP_PROXY"
    elif isinstance(exc, httpx2.TransportError):
        msg = (f"cannot download model repo '{repo_id}': {where} cannot be reached ({type(exc).__name__}: {exc}): "
               "check the network and HF_ENDPOINT/endpoint, then pull again")
    elif isinstance(exc, FileMetadataError):
        msg = (f"cannot download model repo '{repo_id}': {where} does not answer like a Hugging Face Hub "
               f"({exc}): check HF_ENDPOINT/endpoint and any proxy in between")
    elif isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if getattr(exc, "response", None) is not None else "?"
        if status in (401, 403):
            fix = "check that the token (HF_TOKEN) is valid and has read access to this repo"
        elif status == 429:
            fix = "the hub is rate limiting this machine; wait and pull again, or use a token"
        else:
            fix = "the hub may be having trouble; pull again later"
        msg = f"cannot download model repo '{repo_id}': {where} answered HTTP {status}: {fix}"
    elif isinstance(exc, OSError):
        msg = (f"cannot download model repo '{repo_id}' into the model cache: {exc}: check free disk space and "
               "that the cache directory (FARM_MODEL_CACHE) is writable")
    else:
        return None
    return ModelDownloadError(msg, repo_id=repo_id, revision=revision)


def _remove_from_cache(snapshot: Path, relpath: str, cache_dir: Path) -> None:
    """Delete a snapshot entry and the blob it points to (if it lives in the cache)."""
    pointer = snapshot / relpath
    try:
        real = Path(os.path.realpath(pointer))
        cache_real = Path(os.path.realpath(cache_dir))
        if real != pointer and cache_real in real.parents and real.is_file():
            real.unlink()
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
    except OSError as exc:
        logger.error("could not remove corrupt file %s from the model cache: %s", pointer, exc)


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path,
    endpoint: str | None = None,
    token: str | None = None,
    allow_patterns: str | list[str] | None = None,
) -> DownloadResult:
    """Download (or find in the cache) a model snapshot and check it.

    ``revision`` is a branch, tag or commit (default: the repo's main branch);
    ``cache_dir`` the huggingface_hub cache shared by the workers of a machine;
    ``endpoint`` the hub URL (default: ``HF_ENDPOINT``, else huggingface.co);
    ``token`` a hub token (default: ``HF_TOKEN`` or the stored login);
    ``allow_patterns`` glob(s) limiting which files are fetched.

    Raises :class:`ModelDownloadError` (message says what to fix) and
    :class:`ModelIntegrityError` (a file did not match the hub's hash; it has
    been removed from the cache).
    """
    cache = Path(cache_dir).expanduser()
    where = (endpoint or hf_constants.ENDPOINT).rstrip("/")
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id):
        raise ModelDownloadError(f"'{repo_id}' is not a hub repo id: expected owner/name", repo_id=str(repo_id),
                                 revision=revision)
    api = HfApi(endpoint=endpoint, token=token, library_name="farm", library_version=_library_version())
    remote: dict | None = None
    offline_reason: BaseException | None = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # Branch/tag -> commit; also records refs/<revision> in the cache so the
        # same name resolves when the hub is unreachable later.
        resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache, token=token)
        commit = resolved.resolved
        try:
            info = api.model_info(repo_id, revision=commit, files_metadata=True, token=token)
            remote = {sibling.rfilename: sibling for sibling in (info.siblings or [])}
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not _hub_unreachable(exc):
                raise
            offline_reason = exc
            logger.warning("model hub %s unreachable (%s); using the cached snapshot of %s@%s",
                           where, type(exc).__name__, repo_id, commit)
        snapshot = Path(snapshot_download(
            repo_id,
            revision=resolved,
            cache_dir=cache,
            endpoint=endpoint,
            token=token,
            allow_patterns=allow_patterns,
            local_files_only=remote is None,
            library_name="farm",
            library_version=_library_version(),
        ))
    except ModelDownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - only hub/IO errors are translated
        translated = _translate(exc, repo_id, revision, where, offline_reason)
        if translated is None:
            raise
        raise translated from exc

    if remote is not None:
        selected = list(filter_repo_objects(sorted(remote), allow_patterns=allow_patterns))
        missing = [rel for rel in selected if not (snapshot / rel).is_file()]
        if missing:
            raise ModelDownloadError(
                f"model repo '{repo_id}'@{commit}: {len(missing)} file(s) missing after download "
                f"({', '.join(missing[:3])}): pull again", repo_id=repo_id, revision=revision)
    else:
        selected = list(filter_repo_objects(_walk_files(snapshot), allow_patterns=allow_patterns))

    record = _HashRecord(cache, repo_id)
    to_hash = {rel: snapshot / rel for rel in selected
               if _is_weights(rel) or (remote is not None and getattr(remote.get(rel), "lfs", None))}
    sha = _hash_many(to_hash, record)

    mismatches: list[IntegrityMismatch] = []
    if remote is not None:
        for rel in selected:
            sibling = remote.get(rel)
            lfs = getattr(sibling, "lfs", None)
            if lfs is not None and lfs.sha256:
                expected = lfs.sha256.lower()
                if sha[rel] != expected:
                    mismatches.append(IntegrityMismatch(rel, "sha256", expected, sha[rel]))
            elif sibling is not None and sibling.blob_id:
                actual = _git_blob_sha1(snapshot / rel)
                if actual != sibling.blob_id.lower():
                    mismatches.append(IntegrityMismatch(rel, "git-sha1", sibling.blob_id.lower(), actual))
    if mismatches:
        for mismatch in mismatches:
            _remove_from_cache(snapshot, mismatch.path, cache)
        for rel in to_hash:  # keep hashes of the files that were fine
            if rel not in {m.path for m in mismatches}:
                record.remember(to_hash[rel], sha[rel])
        record.save()
        logger.error("model %s@%s failed its integrity check: %s", repo_id, commit,
                     "; ".join(str(m) for m in mismatches))
        raise ModelIntegrityError(
            mismatches=mismatches,
            context=(f"model repo '{repo_id}'@{commit} from {where}; the bad file(s) were removed from the cache, "
                     "pull again (if it keeps failing, the hub or a proxy serves corrupt data)"),
            repo_id=repo_id, revision=revision)

    for rel, full in to_hash.items():
        record.remember(full, sha[rel])
    record.save()

    files = {rel: sha[rel] for rel in selected if _is_weights(rel)}
    result = DownloadResult(path=snapshot, revision=commit, files=files, weights_sha256=weights_fingerprint(files))
    logger.info("model %s@%s ready at %s (%d weights file(s), fingerprint %s%s)", repo_id, commit, snapshot,
                len(files), result.weights_sha256[:12], ", from cache; hub unreachable" if remote is None else "")
    return result

