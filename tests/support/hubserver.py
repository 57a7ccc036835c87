"""A small local Hugging Face hub: the HTTP routes huggingface_hub 2.4.0 asks for when it downloads.

The real client (``HF_ENDPOINT=<Hub.url>``) talks to it over sockets, so ``embedstream pull`` and
workers run their real download path. Routes, as huggingface_hub calls them:

* ``GET /api/models/{repo}[/revision/{rev}]`` (``HfApi.repo_info``/``model_info``): id and commit sha,
  the siblings; with ``?blobs=true`` (``files_metadata=True``) their size, git blob id and LFS sha256.
* ``GET /api/models/{repo}/tree/{rev}?recursive=..`` (``list_repo_tree``): files and folders, a few per
  page, the next page in a ``Link: <..>; rel="next"`` header.
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``hf_hub_download``): ``X-Repo-Commit``, ``ETag`` (the
  git blob id), for LFS files ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; ``Range: bytes=N-``
  gets 206 with ``Content-Range``. No ``X-Xet-*`` header is ever sent, so clients take plain HTTP.

Unknown repos get 404 ``RepoNotFound``; a gated repo answers its files with 401 ``GatedRepo`` (its
metadata stays public, as on huggingface.co). Every request is recorded; a file can be stalled after
N bytes (until ``release``) or served with bytes that differ from the sha256 it advertises.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

#: What the hub's default .gitattributes stores in LFS (the part tiny models use).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".h5", ".msgpack")
_PIECE = 1 << 20


@dataclass(frozen=True)
class Request:
    """One request the hub answered: method, path (without the query) and its Range header."""

    method: str
    path: str
    range: str | None


@dataclass
class Repo:
    """A model repository at one commit: its files by path."""

    files: dict[str, bytes]
    gated: bool = False
    commit: str = ""

    def __post_init__(self) -> None:
        listing = "".join(f"{p}\0{git_oid(d)}\n" for p, d in sorted(self.files.items()))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()

    def entry(self, path: str) -> dict[str, object]:
        """The tree entry of a file, as /tree lists it."""
        data = self.files[path]
        out: dict[str, object] = {"type": "file", "oid": git_oid(data), "size": len(data), "path": path}
        if path.endswith(LFS_SUFFIXES):
            out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return out


def git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the hub's ETag is for a file outside LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Hub:
    """The hub server; ``with Hub() as hub:`` serves on a free port of 127.0.0.1 until the block ends."""

    page_size: int = 4
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    stalls: dict[tuple[str, str], int] = field(default_factory=dict)
    corrupt: set[tuple[str, str]] = field(default_factory=set)
    _released: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    def add(self, repo: str, folder: Path, gated: bool = False) -> Repo:
        """Serve every file under ``folder`` as ``repo``."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.repos[repo] = Repo(files, gated)
        return self.repos[repo]

    def stall(self, repo: str, path: str, after: int) -> None:
        """GETs of ``path`` stop sending at byte ``after`` of the file until ``release()``."""
        self._released.clear()
        self.stalls[(repo, path)] = after

    def release(self) -> None:
        """Stalled downloads go on; later ones are not stalled."""
        self.stalls.clear()
        self._released.set()

    def gets(self, repo: str, path: str) -> list[Request]:
        """The GETs of one file so far."""
        return [r for r in self.requests if r.method == "GET" and r.path == f"/{repo}/resolve/{self._rev(repo)}/{path}"]

    def _rev(self, repo: str) -> str:
        return self.repos[repo].commit

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Hub:
        hub = self

        class Handler(_Handler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
_FILE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    owner: Hub
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hub = self.owner
        split = urlsplit(self.path)
        path = unquote(split.path)
        hub.requests.append(Request(self.command, path, self.headers.get("Range")))
        query = parse_qs(split.query)
        for pattern, route in ((_INFO, self._info), (_TREE, self._tree), (_FILE, self._file)):
            if found := pattern.match(path):
                repo = hub.repos.get(found["repo"])
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                rev = found["rev"] or "main"
                if rev not in ("main", repo.commit):
                    return self._error(404, "RevisionNotFound", "Invalid rev id: " + rev, repo.commit)
                return route(found, repo, query, body)
        self._error(404, None, "Not found")

    def _info(self, found: re.Match[str], repo: Repo, query: dict[str, list[str]], body: bool) -> None:
        siblings: list[dict[str, object]] = []
        for path in repo.files:
            entry = repo.entry(path)
            sibling: dict[str, object] = {"rfilename": path}
            if query.get("blobs") == ["true"] or query.get("blobs") == ["True"]:
                sibling |= {"size": entry["size"], "blobId": entry["oid"]}
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    assert isinstance(lfs, dict)
                    sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        info = {"id": found["repo"], "modelId": found["repo"], "sha": repo.commit, "private": False}
        self._json(info | {"gated": "manual" if repo.gated else False, "siblings": siblings}, body)

    def _tree(self, found: re.Match[str], repo: Repo, query: dict[str, list[str]], body: bool) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        folders = sorted({"/".join(p.split("/")[: i + 1]) for p in repo.files for i in range(p.count("/"))})
        entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in folders]
        entries += [repo.entry(p) for p in repo.files]
        entries = [e for e in entries if recursive or "/" not in str(e["path"])]
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.owner.page_size]
        headers = {}
        if start + self.owner.page_size < len(entries):
            following = f"{self.owner.url}/api/models/{found['repo']}/tree/{found['rev']}"
            nxt = start + self.owner.page_size
            headers["Link"] = f'<{following}?recursive={str(recursive).lower()}&cursor={nxt}>; rel="next"'
        self._json(page, body, headers)

    def _file(self, found: re.Match[str], repo: Repo, query: dict[str, list[str]], body: bool) -> None:
        name = found["path"]
        if name not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found", repo.commit)
        if repo.gated:
            message = f"Access to model {found['repo']} is restricted. You must have access to it and be authenticated."
            return self._error(401, "GatedRepo", message, repo.commit)
        data = repo.files[name]
        entry = repo.entry(name)
        start = 0
        if ranged := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(ranged[1])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{entry["oid"]}"')
        if "lfs" in entry:
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            self._send(found["repo"], name, data, start)

    def _send(self, repo: str, name: str, data: bytes, start: int) -> None:
        if (repo, name) in self.owner.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])  # same size, other bytes: its sha256 no longer matches
        stall = self.owner.stalls.get((repo, name))
        try:
            at = start
            while at < len(data):
                end = min(len(data), at + _PIECE, stall if stall is not None and stall > at else len(data))
                self.wfile.write(data[at:end])
                at = end
                if stall is not None and at == stall:
                    self.wfile.flush()
                    self.owner._released.wait(timeout=120)
                    stall = None
        except (BrokenPipeError, ConnectionResetError):  # the client went away (killed, as tests do)
            self.close_connection = True

    def _json(self, payload: object, body: bool, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
