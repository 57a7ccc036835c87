"""`embedstream pull` and registry `hf:` paths, offline: a snapshot laid out as huggingface_hub caches one.

This machine cannot reach the hub, so nothing here downloads: the cache is built in
huggingface_hub's layout (blobs named by sha256 for LFS files and by git blob id for the rest,
snapshots/<commit>/ linking to them, refs/main), and huggingface_hub's own scan_cache_dir and
snapshot_download must read it back before the CLI and a worker use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from tests.support import ROOT, tinymodels
from tests.support.processes import base_env, start_gateway, start_worker, stub

REPO = "tinyorg/tiny-st"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(hub: Path, repo: str, folder: Path) -> Path:
    """``folder`` stored as huggingface_hub stores a downloaded snapshot of ``repo``; the snapshot folder."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        lfs = path.suffix in (".safetensors", ".bin") or len(data) > 10_000_000
        blob = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / blob).write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "blobs" / blob, link.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF_HOME, the tiny model's own folder) with the model cached as REPO."""
    root = tmp_path_factory.mktemp("hub")
    model = tinymodels.sentence_transformer(root / "model")
    snapshot = cache_repo(root / "hf" / "hub", REPO, model)
    probe = (
        "import sys; from huggingface_hub import scan_cache_dir, snapshot_download\n"
        "repos = {r.repo_id: r for r in scan_cache_dir().repos}\n"
        f"assert repos[{REPO!r}].nb_files > 3, repos\n"
        f"print(snapshot_download({REPO!r}, local_files_only=True))"
    )
    env = dict(os.environ, HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1")
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.strip() == str(snapshot), found.stderr
    return root / "hf", model


def pull(hf_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "embedstream", "pull", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_pull_copies_a_cached_snapshot_checks_it_and_prints_its_registry_entry(
    cached: tuple[Path, Path], tmp_path: Path
) -> None:
    hf_home, model = cached
    result = pull(hf_home, REPO, "--to", str(tmp_path / "tiny-st"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'[models."tiny-st"]\nfamily = "text-dense"\npath = "{tmp_path / "tiny-st"}"\n'
    assert "HF_HUB_OFFLINE=1: reading tinyorg/tiny-st from the cache only" in result.stderr
    for path in (p for p in model.rglob("*") if p.is_file()):
        copy = tmp_path / "tiny-st" / path.relative_to(model)
        assert not copy.is_symlink() and copy.read_bytes() == path.read_bytes()


def test_pull_refuses_a_snapshot_whose_weights_differ_from_their_sha256(
    cached: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = cached
    broken = tmp_path / "hf"
    snapshot = cache_repo(broken / "hub", REPO, model)
    weights = (
        Path(os.path.realpath(snapshot / "model.safetensors")) if (snapshot / "model.safetensors").exists() else None
    )
    weights = weights or Path(os.path.realpath(next(snapshot.rglob("*.safetensors"))))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    result = pull(broken, REPO, "--to", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "differs from the hub's" in result.stderr and "pull again" in result.stderr


def test_pull_names_what_to_do_when_neither_hub_nor_cache_has_it(tmp_path: Path) -> None:
    result = pull(tmp_path / "empty", "tinyorg/absent")
    assert result.returncode == 2
    assert "tinyorg/absent: not in the Hugging Face cache" in result.stderr and "docs/weights.md" in result.stderr


def test_a_worker_serves_an_hf_path_from_the_cache_and_names_pull_when_missing(
    cached: tuple[Path, Path], redis_server: RedisServer, r: redis.Redis, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    hf_home, model = cached
    registry = tmp_path / "models.toml"
    registry.write_text(
        f'[models.tiny]\nfamily = "text-dense"\npath = "hf:{REPO}"\n\n'
        '[models.absent]\nfamily = "text-dense"\npath = "hf:tinyorg/absent"\n'
    )
    env = base_env(redis_server.url, registry, HF_HOME=str(hf_home), EMBEDSTREAM_THREADS="1")
    missing = subprocess.run(
        [sys.executable, "-m", "embedstream", "worker", "--model", "absent"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert "models.absent.path: hf:tinyorg/absent is not in the Hugging Face cache" in missing.stderr
    assert "HF_HUB_OFFLINE=1" in missing.stderr and "embedstream pull tinyorg/absent" in missing.stderr
    gateway, port = start_gateway(env, tmp_path)
    worker = start_worker(env, tmp_path, "tiny", r)
    try:
        with stub(port) as s:
            resp = s.Embed(pb.EmbedRequest(model="tiny", inputs=[pb.Input(text="hello hub")]), timeout=30)
        got = np.array(resp.embeddings[0].values, dtype=np.float32)
        expected = SentenceTransformer(str(model), device="cpu").encode(["hello hub"])[0]
        assert np.abs(got - expected).max() <= 1e-5
    finally:
        worker.stop()
        gateway.stop()


def test_every_command_of_the_weights_page_parses_and_those_needing_internet_say_so() -> None:
    import shlex

    from embedstream.arguments import parser as _parser

    page = (ROOT / "docs/weights.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", page, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert any(line.startswith("embedstream pull") for line in lines)
    for line in lines:
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        if "embedstream" in words:
            _parser().parse_args(words[words.index("embedstream") + 1 :])  # exits on an unknown flag
        if words[:2] == ["embedstream", "pull"] or "HF_HUB_OFFLINE=0" in words:
            assert "needs internet" in comment, line
