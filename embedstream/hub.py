"""Weights from the Hugging Face hub: `embedstream pull`, and the folder a registry's ``hf:`` path names.

Downloads go to the standard Hugging Face cache. The LFS files (the weights) come first, each into
``blobs/<sha256>.incomplete``, which a later run resumes with an HTTP Range request (huggingface_hub
itself deletes a partial download when its process stops), and each lands under its name only once
its sha256 equals the hub's. ``huggingface_hub.snapshot_download`` then fetches the rest and lays out
the snapshot; every other file is checked against its git blob id. Without the hub, the cached
snapshot is used and checked against the names of its blobs. A worker reads an ``hf:`` model from
the cache; only with ``HF_HUB_OFFLINE=0`` does it download one (the same way).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from embedstream.errors import ConfigError

#: Read in blocks of this size while hashing weights.
_BLOCK = 1 << 20


def offline(default: str = "1") -> bool:
    """Whether HF_HUB_OFFLINE keeps this process off the hub; ``default`` when it is unset (workers: on)."""
    return os.environ.get("HF_HUB_OFFLINE", default).strip().lower() not in ("0", "false", "no", "off", "")


def folder(name: str, hub_id: str) -> str:
    """The local snapshot of ``hub_id`` for model ``name``: from the cache, or downloaded when allowed."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = hub_id.partition("@")
    try:
        return str(_cached(repo, revision or None, verify=False) if offline() else download(repo, revision or None))
    except LocalEntryNotFoundError:
        where = "and HF_HUB_OFFLINE=1 keeps this machine off the hub" if offline() else "and the hub is unreachable"
        raise ConfigError(
            f"models.{name}.path: hf:{hub_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) {where}; "
            f"run `embedstream pull {repo}` (on a machine with internet, then copy the folder it prints: "
            "docs/weights.md), or set HF_HUB_OFFLINE=0 where the hub is reachable"
        ) from None
    except (HfHubHTTPError, httpx2.TransportError) as exc:
        raise ConfigError(f"models.{name}.path: hf:{hub_id}: {_hub_error(repo, revision, exc)}") from None


def pull(repo: str, to: Path | None, revision: str | None) -> Path:
    """Download (or resume) ``repo`` into the cache, or into ``to``; verified; returns the folder.

    Only an explicit HF_HUB_OFFLINE=1 keeps it off the hub (pulling is what it is for); without a
    reachable hub, a snapshot already in the cache is used (and copied to ``to``).
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        if offline(default="0"):
            print(f"HF_HUB_OFFLINE=1: reading {repo} from the cache only (HF_HUB_OFFLINE=0 downloads)", file=sys.stderr)
            snapshot = _cached(repo, revision)
        else:
            snapshot = download(repo, revision)
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"{repo}: not in the Hugging Face cache, and the hub is unreachable or HF_HUB_OFFLINE=1; "
            "pull it with HF_HUB_OFFLINE=0 on a machine with internet and copy the folder (docs/weights.md)"
        ) from None
    except (HfHubHTTPError, httpx2.TransportError) as exc:  # an error answer, or a connection that broke
        raise ConfigError(_hub_error(repo, revision, exc)) from None
    if to is None:
        return snapshot
    to.mkdir(parents=True, exist_ok=True)
    # Real files, not the cache's links into blobs/: the folder can be copied anywhere.
    shutil.copytree(snapshot, to, dirs_exist_ok=True, symlinks=False)
    return to.resolve()


def download(repo: str, revision: str | None) -> Path:
    """The snapshot of ``repo`` in the cache, downloaded or resumed and checked; the cached one without a hub."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import repo_folder_name

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except HfHubHTTPError:
        raise  # the hub answered: unknown, gated, no such revision
    except Exception as exc:  # not reached (refused, no DNS, timed out): what the cache holds will do
        print(f"the hub ({constants.ENDPOINT}) did not answer ({exc}); using the cache", file=sys.stderr)
        return _cached(repo, revision)
    assert info.sha is not None, "the hub names the commit of every model it describes"
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    expected: dict[str, str] = {}
    checked: set[str] = set()
    for sibling in info.siblings or []:
        if sibling.lfs is not None:
            if _fetch_blob(repo, info.sha, sibling.rfilename, sibling.lfs.sha256, sibling.lfs.size, storage):
                checked.add(sibling.rfilename)
            expected[sibling.rfilename] = sibling.lfs.sha256
        elif sibling.blob_id:
            expected[sibling.rfilename] = sibling.blob_id
    # Pinned to the commit just described, so the files checked are the files listed; the branch's
    # ref is written as snapshot_download would, for offline look-ups by name.
    snapshot = Path(snapshot_download(repo, revision=info.sha))
    if revision != info.sha:
        ref = storage / "refs" / (revision or "main")
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(info.sha)
    _verify(snapshot, {k: v for k, v in expected.items() if k not in checked})
    return snapshot


def _cached(repo: str, revision: str | None, verify: bool = True) -> Path:
    """The snapshot the cache holds (LocalEntryNotFoundError if none), checked against its blobs' names."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    if verify:
        _verify(snapshot, _cache_digests(snapshot))
    return snapshot


def _fetch_blob(repo: str, commit: str, name: str, sha256: str, size: int, storage: Path) -> bool:
    """Download one LFS file into ``blobs/<sha256>``, resuming a partial one; whether it was fetched (and checked)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers  # type: ignore[attr-defined]  # lazily exported

    blob = storage / "blobs" / sha256
    if blob.exists():
        return False
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(f"{sha256}.incomplete")
    # huggingface_hub takes the same lock for this blob: one download of it at a time, whoever runs it.
    lock = storage.parent / ".locks" / storage.name / f"{sha256}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if blob.exists():
            return False
        done = partial.stat().st_size if partial.exists() else 0
        with partial.open("ab") as f:
            url = hf_hub_url(repo, name, revision=commit)
            http_get(url, f, resume_size=done, headers=build_hf_headers(), expected_size=size, displayed_filename=name)
        if (got := _digest(partial, sha256)) != sha256:
            partial.unlink()
            raise ConfigError(f"{repo}: {name}: sha256 {got} differs from the hub's {sha256}; pull again")
        os.replace(partial, blob)
    return True


def registry_lines(repo: str, where: Path) -> str:
    """The registry entry that serves ``where``, its family read from the folder's files."""
    name = repo.rsplit("/", 1)[-1].lower()
    return f'[models."{name}"]\nfamily = "{family(where)}"\npath = "{where}"\n'


def family(where: Path) -> str:
    """The registry family a model folder looks like (text-dense unless its files say otherwise)."""
    if (where / "open_clip_config.json").exists():
        return "image-text"
    modules = _json(where / "modules.json")
    kinds = " ".join(str(m.get("type", "")) for m in modules) if isinstance(modules, list) else ""
    if "SpladePooling" in kinds or "SparseStaticEmbedding" in kinds:
        return "sparse"
    if "MultiVector" in kinds:
        return "multi-vector"
    config = _json(where / "config.json") or {}
    architectures = " ".join(config.get("architectures") or [])
    if "CLIP" in architectures or "Siglip" in architectures:
        return "image-text"
    if "ForSequenceClassification" in architectures:
        # One label scores a (query, document) pair; more are a classifier's labels.
        return "classify" if len(config.get("id2label") or {0: ""}) > 1 else "rerank"
    if "ForMaskedLM" in architectures and not modules:
        return "sparse"
    return "text-dense"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _hub_error(repo: str, revision: str | None, exc: Exception) -> str:
    """What an error answer of the hub (or a broken connection to it) means here, and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if not isinstance(exc, HfHubHTTPError):  # huggingface_hub retried a few times already
        return (
            f"{repo}: the connection to the hub ({constants.ENDPOINT}) failed ({type(exc).__name__}: {exc}); "
            "run it again: it goes on from the bytes already on disk"
        )

    login = "log in here (`hf auth login`, or set HF_TOKEN)"
    if isinstance(exc, GatedRepoError):
        return f"{repo} is gated: accept its conditions on {constants.ENDPOINT}/{repo}, {login} and pull again"
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{repo}: no such model on the hub ({constants.ENDPOINT}); check the id (org/name, as in the model "
            f"page's address); a private model needs its owner's access: {login}"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo} has no revision {revision!r} on the hub; name a branch, tag or commit of it"
    status = getattr(getattr(exc, "response", None), "status_code", "an error")
    return f"{repo}: the hub ({constants.ENDPOINT}) answered {status}: {str(exc).strip().splitlines()[0]}; try again"


def _cache_digests(snapshot: Path) -> dict[str, str]:
    """Each file's digest, from the cache: its blob is named by it (sha256 for LFS files, git blob id otherwise)."""
    out: dict[str, str] = {}
    for path in snapshot.rglob("*"):
        blob = Path(os.path.realpath(path)).name
        if path.is_symlink() and len(blob) in (40, 64):
            out[str(path.relative_to(snapshot))] = blob
    return out


def _digest(path: Path, like: str) -> str:
    """``path``'s sha256 when ``like`` is one (64 hex digits), else its git blob id (40)."""
    digest = hashlib.sha256() if len(like) == 64 else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _verify(snapshot: Path, expected: dict[str, str]) -> None:
    """Each named file of ``snapshot`` has its expected digest; a file that differs leaves the cache."""
    for name, want in sorted(expected.items()):
        path = snapshot / name
        if (got := _digest(path, want)) != want:
            # Out of the cache, link and blob, so that pulling again downloads it afresh.
            Path(os.path.realpath(path)).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            kind = "sha256" if len(want) == 64 else "git blob id"
            raise ConfigError(f"{path}: {kind} {got} differs from the hub's {want}; pull again")
