"""Weights from the Hugging Face hub: `embedstream pull`, and the folder a registry's ``hf:`` path names.

Downloads go through ``huggingface_hub.snapshot_download`` (progress bars, resumable
``.incomplete`` files, the standard cache). After a download every LFS file is checked against
the sha256 the hub gives for it. A worker finds an ``hf:`` model in the cache; only with
``HF_HUB_OFFLINE=0`` does it download one that is missing.
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


def offline() -> bool:
    """Whether HF_HUB_OFFLINE keeps this process off the hub (unset counts as on, as the worker sets it)."""
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off", "")


def folder(name: str, hub_id: str) -> str:
    """The local snapshot of ``hub_id`` for model ``name``: from the cache, or downloaded when allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _, revision = hub_id.partition("@")
    try:
        return str(snapshot_download(repo, revision=revision or None, local_files_only=offline()))
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        where = "and HF_HUB_OFFLINE=1 keeps this machine off the hub" if offline() else "and the hub is unreachable"
        raise ConfigError(
            f"models.{name}.path: hf:{hub_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) {where}; "
            f"run `embedstream pull {repo}` (on a machine with internet, then copy the folder it prints: "
            "docs/weights.md), or set HF_HUB_OFFLINE=0 where the hub is reachable"
        ) from None
    except OSError as exc:  # the hub answered with an error (unknown repo, gated, ...)
        raise ConfigError(f"models.{name}.path: hf:{hub_id}: {exc}") from None


def pull(repo: str, to: Path | None, revision: str | None) -> Path:
    """Download (or resume) ``repo`` into the cache, or into ``to``; verified; returns the folder.

    Without a reachable hub, a snapshot already in the cache is used (and copied to ``to``).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if offline():
        print(f"HF_HUB_OFFLINE=1: reading {repo} from the cache only (HF_HUB_OFFLINE=0 downloads)", file=sys.stderr)
    try:
        # Without a reachable hub (or offline) snapshot_download falls back to the cache itself.
        snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=offline()))
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"{repo}: not in the Hugging Face cache, and the hub is unreachable or HF_HUB_OFFLINE=1; "
            "pull it with HF_HUB_OFFLINE=0 on a machine with internet and copy the folder (docs/weights.md)"
        ) from None
    try:
        expected = {} if offline() else _hub_sha256(repo, revision)
    except Exception:  # any failure to ask the hub (down, unreachable): the cache has the hashes too
        expected = {}
    expected = expected or _cache_sha256(snapshot)
    _verify(snapshot, expected)
    if to is None:
        return snapshot
    to.mkdir(parents=True, exist_ok=True)
    # Real files, not the cache's links into blobs/: the folder can be copied anywhere.
    shutil.copytree(snapshot, to, dirs_exist_ok=True, symlinks=False)
    return to.resolve()


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
    architectures = " ".join((_json(where / "config.json") or {}).get("architectures") or [])
    if "CLIP" in architectures or "Siglip" in architectures:
        return "image-text"
    if "ForSequenceClassification" in architectures:
        return "rerank"
    if "ForMaskedLM" in architectures and not modules:
        return "sparse"
    return "text-dense"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _hub_sha256(repo: str, revision: str | None) -> dict[str, str]:
    """The sha256 the hub gives for each LFS file of the snapshot."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    return {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs is not None}


def _cache_sha256(snapshot: Path) -> dict[str, str]:
    """The sha256 of each LFS file, from the cache: its blob is named by it (64 hex digits)."""
    out: dict[str, str] = {}
    for path in snapshot.rglob("*"):
        blob = Path(os.path.realpath(path)).name
        if path.is_symlink() and len(blob) == 64:
            out[str(path.relative_to(snapshot))] = blob
    return out


def _verify(snapshot: Path, expected: dict[str, str]) -> None:
    for name, sha in sorted(expected.items()):
        digest = hashlib.sha256()
        with (snapshot / name).open("rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        if digest.hexdigest() != sha:
            got = digest.hexdigest()
            raise ConfigError(f"{snapshot / name}: sha256 {got} differs from the hub's {sha}; pull again")
