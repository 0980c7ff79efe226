"""A local stand-in for the Hugging Face Hub, for tests.

It speaks the part of the hub's HTTP protocol that huggingface_hub 2.4 uses to
resolve a revision, read a model's metadata and download a snapshot:

* ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``
  (``?blobs=true`` adds size, blobId and LFS sha256 per file): model info,
  used by ``HfApi.model_info`` / ``repo_info`` / ``resolve_revision``;
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...``: the file
  listing, paginated with a ``Link: <...>; rel="next"`` header, used by
  ``snapshot_download``;
* ``HEAD /{repo}/resolve/{rev}/{path}``: file metadata in headers
  (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS
  files, ``Content-Length``), used by ``hf_hub_download``;
* ``GET /{repo}/resolve/{rev}/{path}``: file content, honouring
  ``Range: bytes=N-`` with ``206 Partial Content``.

Errors carry the hub's ``X-Error-Code`` header (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``) so huggingface_hub raises its usual
exceptions. LFS files are served directly from the resolve URL instead of a
redirect to a CDN host.

The server listens on 127.0.0.1 only, on a free port, in a background thread.
Repos are built from a directory (or a ``{path: bytes}`` mapping) with a fixed
commit hash. Knobs for failure tests: ``corrupt_lfs_metadata`` (the hub
advertises a wrong sha256), ``corrupt_content`` (the hub serves other bytes
than it advertises), ``interrupt_next_get`` (the connection drops in the
middle of a file) and a per-repo ``token`` (private repo). Every request is
recorded in ``requests``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.onnx", "*.msgpack", "*.h5")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_DATE = "2025-01-01T00:00:00.000Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class FakeFile:
    path: str
    data: bytes
    lfs: bool
    # What the hub advertises (sha256) and what it serves (bytes); tests may
    # make them disagree with the real content.
    advertised_sha256: str = ""
    served: bytes | None = None

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.advertised_sha256 = self.advertised_sha256 or self.sha256
        self.pointer = lfs_pointer(self.data) if self.lfs else b""

    @property
    def body(self) -> bytes:
        return self.data if self.served is None else self.served

    @property
    def blob_id(self) -> str:
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.advertised_sha256 if self.lfs else self.blob_id


@dataclass
class FakeRepo:
    repo_id: str
    commits: dict[str, dict[str, FakeFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    token: str | None = None

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if _COMMIT_RE.match(revision) and revision in self.commits:
            return revision
        return None


@dataclass
class RecordedRequest:
    method: str
    path: str  # unquoted, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0  # bytes of file content actually sent


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 that looks like a small model hub."""

    def __init__(self, *, page_size: int = 1000, lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS):
        self.page_size = page_size
        self.lfs_patterns = lfs_patterns
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._interrupts: dict[tuple[str, str], list[int]] = {}
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_HubHandler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and hang up on open keep-alive connections, so a
        client's connection pool cannot keep talking to a stopped hub."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeHub is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- content -----------------------------------------------------------

    def add_commit(self, repo_id: str, source: str | Path | Mapping[str, bytes], *, commit: str | None = None,
                   refs: tuple[str, ...] = ("main",), token: str | None = None) -> str:
        """Add a commit made of a directory's files (or a path->bytes mapping).

        Returns the commit hash (``commit`` if given, else derived from the
        content). Each name in ``refs`` (branch or tag) is pointed at it.
        """
        if isinstance(source, Mapping):
            items = {str(k): bytes(v) for k, v in source.items()}
        else:
            root = Path(source)
            items = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        files = {path: FakeFile(path, data, lfs=self._is_lfs(path)) for path, data in sorted(items.items())}
        if commit is None:
            listing = "".join(f"{p}\0{f.blob_id}\n" for p, f in files.items())
            commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
        assert _COMMIT_RE.match(commit), "a commit hash is 40 lowercase hex digits"
        with self._lock:
            repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
            repo.commits[commit] = files
            for ref in refs:
                repo.refs[ref] = commit
            if token is not None:
                repo.token = token
        return commit

    def file(self, repo_id: str, path: str, revision: str = "main") -> FakeFile:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)][path]

    def corrupt_lfs_metadata(self, repo_id: str, path: str, *, revision: str = "main",
                             sha256: str | None = None) -> str:
        """Make the hub advertise a wrong sha256 for an LFS file; returns it."""
        f = self.file(repo_id, path, revision)
        assert f.lfs, f"{path} is not an LFS file"
        f.advertised_sha256 = sha256 or hashlib.sha256(b"not the content of " + path.encode()).hexdigest()
        return f.advertised_sha256

    def corrupt_content(self, repo_id: str, path: str, *, revision: str = "main") -> None:
        """Serve bytes that differ from the advertised ones (same length)."""
        f = self.file(repo_id, path, revision)
        body = bytearray(f.data)
        body[len(body) // 2] ^= 0xFF
        f.served = bytes(body)

    def repair(self, repo_id: str, path: str, *, revision: str = "main") -> None:
        f = self.file(repo_id, path, revision)
        f.advertised_sha256 = f.sha256
        f.served = None

    def interrupt_next_get(self, repo_id: str, path: str, after_bytes: int, *, times: int = 1) -> None:
        """The next ``times`` full GETs of the file drop the connection after ``after_bytes``."""
        with self._lock:
            self._interrupts.setdefault((repo_id, path), []).extend([after_bytes] * times)

    def _take_interrupt(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            pending = self._interrupts.get((repo_id, path))
            return pending.pop(0) if pending else None

    def _is_lfs(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.lfs_patterns)

    # -- request log -------------------------------------------------------

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def content_gets(self, path: str | None = None) -> list[RecordedRequest]:
        """GETs of file content (resolve URLs) that sent content back."""
        with self._lock:
            found = [r for r in self.requests
                     if r.method == "GET" and "/resolve/" in r.path and r.status in (200, 206)]
        if path is not None:
            found = [r for r in found if r.path.endswith("/" + path)]
        return found

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()


def _json(data) -> bytes:
    return json.dumps(data).encode()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    fake_hub: FakeHub  # set by FakeHub.start

    def setup(self) -> None:
        super().setup()
        with self.fake_hub._lock:
            self.fake_hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.fake_hub._lock:
            self.fake_hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    # -- plumbing ----------------------------------------------------------

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        entry = RecordedRequest(
            method=self.command,
            path=unquote(parts.path),
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        self._entry = entry
        try:
            segments = [unquote(s) for s in parts.path.split("/")[1:]]
            if segments[:2] == ["api", "models"]:
                self._api(segments[2:], entry.query, head=head)
            elif "resolve" in segments:
                self._resolve(segments, head=head)
            else:
                self._error(404, None, "Not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.fake_hub._record(entry)

    def _send(self, status: int, headers: Mapping[str, str], body: bytes = b"", *, head: bool = False,
              declared_length: int | None = None) -> None:
        self._entry.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
            self.wfile.flush()

    def _error(self, status: int, code: str | None, message: str, extra: Mapping[str, str] | None = None,
               *, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        headers.update(extra or {})
        self._send(status, headers, _json({"error": message}), head=head)

    def _repo(self, repo_id: str, *, head: bool = False) -> FakeRepo | None:
        repo = self.fake_hub.repos.get(repo_id)
        if repo is not None and repo.token is not None:
            if self.headers.get("Authorization", "") != f"Bearer {repo.token}":
                repo = None  # private repos look missing to strangers, as on the hub
                self._error(401, "RepoNotFound", "Repository not found", head=head)
                return None
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head=head)
        return repo

    def _split_repo(self, segments: list[str], marker: str | None) -> tuple[str, list[str]]:
        """'owner/name/<marker>/...' or 'name/<marker>/...' -> (repo_id, rest)."""
        if marker is not None and marker in segments:
            idx = segments.index(marker)
            # A repo id has 1 or 2 parts; the marker follows it.
            if idx in (1, 2):
                return "/".join(segments[:idx]), segments[idx:]
        if len(segments) >= 2 and "/".join(segments[:2]) in self.fake_hub.repos:
            return "/".join(segments[:2]), segments[2:]
        if len(segments) >= 2:
            return "/".join(segments[:2]), segments[2:]
        return "/".join(segments), []

    # -- /api/models -------------------------------------------------------

    def _api(self, segments: list[str], query: dict[str, list[str]], *, head: bool) -> None:
        marker = next((m for m in ("revision", "tree") if m in segments[1:3]), None)
        repo_id, rest = self._split_repo(segments, marker)
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return
        if not rest:
            self._model_info(repo, "main", query, head=head)
        elif rest[0] == "revision" and len(rest) >= 2:
            self._model_info(repo, "/".join(rest[1:]), query, head=head)
        elif rest[0] == "tree" and len(rest) >= 2:
            self._tree(repo, rest[1], "/".join(rest[2:]), query, head=head)
        else:
            self._error(404, None, "Not found", head=head)

    def _commit(self, repo: FakeRepo, revision: str, *, head: bool) -> str | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        return commit

    def _model_info(self, repo: FakeRepo, revision: str, query: dict[str, list[str]], *, head: bool) -> None:
        commit = self._commit(repo, revision, head=head)
        if commit is None:
            return
        files = repo.commits[commit]
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = []
        for f in files.values():
            sibling: dict = {"rfilename": f.path}
            if blobs:
                sibling["blobId"] = f.blob_id
                sibling["size"] = len(f.data)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.advertised_sha256, "size": len(f.data),
                                      "pointerSize": len(f.pointer)}
            siblings.append(sibling)
        owner = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        data = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": owner,
            "sha": commit,
            "lastModified": _DATE,
            "createdAt": _DATE,
            "private": repo.token is not None,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["diffusers"],
            "library_name": "diffusers",
            "siblings": siblings,
        }
        if blobs:
            data["usedStorage"] = sum(len(f.data) for f in files.values())
        self._send(200, {"Content-Type": "application/json"}, _json(data), head=head)

    def _tree(self, repo: FakeRepo, revision: str, path: str, query: dict[str, list[str]], *, head: bool) -> None:
        commit = self._commit(repo, revision, head=head)
        if commit is None:
            return
        files = repo.commits[commit]
        recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", head=head)
            return
        entries: list[dict] = []
        dirs: set[str] = set()
        for p, f in files.items():
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                entry = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": p}
                if f.lfs:
                    entry["lfs"] = {"oid": f.advertised_sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
                entries.append(entry)
        for d in dirs:
            entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        start = int(query.get("cursor", ["0"])[-1] or 0)
        page = entries[start:start + self.fake_hub.page_size]
        headers = {"Content-Type": "application/json"}
        if start + self.fake_hub.page_size < len(entries):
            # Same shape as the hub (and GitHub): an absolute URL with a cursor.
            keep = {k: v[-1] for k, v in query.items() if k != "cursor"}
            qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in keep.items())
            next_url = (f"http://127.0.0.1:{self.fake_hub.port}{urlsplit(self.path).path}?"
                        f"{qs + '&' if qs else ''}cursor={start + self.fake_hub.page_size}")
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._send(200, headers, _json(page), head=head)

    # -- /{repo}/resolve/{rev}/{path} ---------------------------------------

    def _resolve(self, segments: list[str], *, head: bool) -> None:
        repo_id, rest = self._split_repo(segments, "resolve")
        if len(rest) < 3 or rest[0] != "resolve":
            self._error(404, None, "Not found", head=head)
            return
        revision, path = rest[1], "/".join(rest[2:])
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return
        commit = self._commit(repo, revision, head=head)
        if commit is None:
            return
        f = repo.commits[commit].get(path)
        if f is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": commit},
                        head=head)
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit,
            "ETag": f'"{f.etag}"',
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.advertised_sha256}"'
            headers["X-Linked-Size"] = str(len(f.data))
        body = f.body
        if head:
            self._send(200, headers, body, head=True)
            return

        range_header = self.headers.get("Range")
        if range_header:
            match = _RANGE_RE.match(range_header.strip())
            start_s, end_s = match.groups() if match else ("", "")
            if not match or (not start_s and not end_s):
                self._send(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            if start_s:
                start = int(start_s)
                end = min(int(end_s), len(body) - 1) if end_s else len(body) - 1
            else:  # suffix range: the last N bytes
                start, end = max(len(body) - int(end_s), 0), len(body) - 1
            if start >= len(body) or start > end:
                self._send(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            chunk = body[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            self._entry.body_bytes = len(chunk)
            self._send(206, headers, chunk)
            return

        cut = self.fake_hub._take_interrupt(repo.repo_id, path)
        if cut is not None and cut < len(body):
            # Promise the whole file, send part of it, hang up.
            self._entry.body_bytes = cut
            self._send(200, headers, body[:cut], declared_length=len(body))
            self.close_connection = True
            return
        self._entry.body_bytes = len(body)
        self._send(200, headers, body)
