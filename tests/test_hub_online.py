"""`embedstream pull` and registry `hf:` paths online: the real huggingface_hub client against a local hub.

tests/support/hubserver.py answers the HTTP routes huggingface_hub 2.4.0 asks for (HF_ENDPOINT points
at it; HF_HOME is the test's own). The tiny model's weights are ~16 MB, more than huggingface_hub's
10 MiB download chunk, so a download stopped part-way leaves bytes on disk to resume from.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from tests.support import ROOT, tinymodels
from tests.support.hubserver import Hub
from tests.support.processes import base_env, start_gateway, start_worker, stub, wait_until

WEIGHTS = "model.safetensors"
MIB = 1 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tinymodels.sentence_transformer(tmp_path_factory.mktemp("hubmodel") / "tiny-st", hidden_size=128)
    assert (folder / WEIGHTS).stat().st_size > 14 * MIB  # past the 10 MiB chunk and the 12 MiB stall below
    return folder


@pytest.fixture(scope="module")
def hub(model: Path) -> Iterator[Hub]:
    with Hub() as server:
        for repo in ("tiny-st", "resume", "flaky", "worker", "lfs-bad", "git-bad"):
            server.add(f"tinyorg/{repo}", model)
        server.add("tinyorg/gated", model, gated=True)
        yield server


def hub_env(hub: Hub, hf_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose hub is ``hub`` (and no token, no progress-bar or offline switches)."""
    drop = ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "PYTHONUNBUFFERED": "1"} | extra


def pull_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedstream", "pull", *args]


def pull(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pull_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def cached_blob(hf_home: Path, repo: str, sha256: str, suffix: str = "") -> Path:
    return hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "blobs" / f"{sha256}{suffix}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embed_one(env: dict[str, str], tmp_path: Path, r: redis.Redis, text: str) -> np.ndarray:
    """Serve the registry's ``tiny`` with a gateway and one worker; the vector they give ``text``."""
    gateway, port = start_gateway(env, tmp_path)
    worker = start_worker(env, tmp_path, "tiny", r)
    try:
        with stub(port) as s:
            resp = s.Embed(pb.EmbedRequest(model="tiny", inputs=[pb.Input(text=text)]), timeout=30)
        return np.array(resp.embeddings[0].values, dtype=np.float32)
    finally:
        worker.stop()
        gateway.stop()


def reference(folder: Path, text: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return np.asarray(SentenceTransformer(str(folder), device="cpu").encode([text])[0])


def test_pull_downloads_with_progress_verifies_and_a_worker_then_serves_it_offline(
    hub: Hub, model: Path, redis_server: RedisServer, r: redis.Redis, tmp_path: Path
) -> None:
    repo, hf_home, to = "tinyorg/tiny-st", tmp_path / "hf", tmp_path / "tiny-st"
    # HF_HUB_OFFLINE unset, as in a user's shell: pulling downloads (only an explicit 1 keeps it off the hub).
    # TQDM_POSITION=-1: huggingface_hub's bars show off a terminal too (here stderr is a pipe).
    result = pull(hub_env(hub, hf_home, TQDM_POSITION="-1"), repo, "--to", str(to))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'[models."tiny-st"]\nfamily = "text-dense"\npath = "{to}"\n'
    assert f"{WEIGHTS}: 100%" in result.stderr and "MB/s" in result.stderr  # huggingface_hub's progress bar
    assert "Traceback" not in result.stderr
    files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    for name in files:
        assert len(hub.gets(repo, name)) == 1, name  # each file fetched once, in full
        assert hub.gets(repo, name)[0].range is None
        assert not (to / name).is_symlink() and (to / name).read_bytes() == (model / name).read_bytes()
    assert not list((hf_home / "hub").rglob("*.incomplete"))

    # Pulled once, offline forever after: a worker with HF_HUB_OFFLINE=1 serves `hf:` from the cache
    # and the hub hears nothing from it.
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.tiny]\nfamily = "text-dense"\npath = "hf:{repo}"\n')
    env = base_env(redis_server.url, registry, HF_HOME=str(hf_home), HF_ENDPOINT=hub.url, EMBEDSTREAM_THREADS="1")
    asked = len(hub.requests)
    got = embed_one(env, tmp_path, r, "hello hub")
    assert hub.requests[asked:] == []
    assert np.abs(got - reference(to, "hello hub")).max() <= 1e-5


def test_an_interrupted_pull_resumes_in_a_new_process_with_a_range_request(
    hub: Hub, model: Path, tmp_path: Path
) -> None:
    repo, hf_home = "tinyorg/resume", tmp_path / "hf"
    want = sha256(model / WEIGHTS)
    partial = cached_blob(hf_home, repo, want, ".incomplete")
    env = hub_env(hub, hf_home, HF_HUB_OFFLINE="0", HF_HUB_DOWNLOAD_TIMEOUT="120")
    hub.stall(repo, WEIGHTS, after=12 * MIB)
    first = subprocess.Popen(
        pull_cmd(repo), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # huggingface_hub writes in 10 MiB chunks: the first lands, the next waits on the stalled hub.
        wait_until(lambda: partial.exists() and partial.stat().st_size >= 10 * MIB, timeout=120)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
        hub.release()
    assert first.returncode == 130, err
    assert "Traceback" not in err and f"pull of {repo} interrupted; run it again to resume" in err
    kept = partial.stat().st_size
    assert 10 * MIB <= kept < (model / WEIGHTS).stat().st_size

    second = pull(env, repo)
    assert second.returncode == 0, second.stderr
    gets = hub.gets(repo, WEIGHTS)
    assert [g.range for g in gets] == [None, f"bytes={kept}-"]
    snapshot = Path(second.stdout.split('path = "')[1].split('"')[0])
    assert sha256(snapshot / WEIGHTS) == want and not partial.exists()


def test_a_connection_that_keeps_breaking_ends_the_pull_with_a_message_and_keeps_the_bytes(
    hub: Hub, model: Path, tmp_path: Path
) -> None:
    repo, hf_home = "tinyorg/flaky", tmp_path / "hf"
    partial = cached_blob(hf_home, repo, sha256(model / WEIGHTS), ".incomplete")
    # Every answer stalls at 12 MiB: with a 1 s read timeout, huggingface_hub's own retries
    # (each a Range request from the 10 MiB on disk) fail too, and it gives up.
    hub.stall(repo, WEIGHTS, after=12 * MIB)
    try:
        result = pull(hub_env(hub, hf_home, HF_HUB_OFFLINE="0", HF_HUB_DOWNLOAD_TIMEOUT="1"), repo)
    finally:
        hub.release()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{repo}: the connection to the hub ({hub.url}) failed (ReadTimeout" in result.stderr
    assert "run it again: it goes on from the bytes already on disk" in result.stderr
    assert partial.stat().st_size == 10 * MIB
    assert {g.range for g in hub.gets(repo, WEIGHTS)[1:]} == {f"bytes={10 * MIB}-"}


@pytest.mark.parametrize(("repo", "name"), [("tinyorg/lfs-bad", WEIGHTS), ("tinyorg/git-bad", "tokenizer.json")])
def test_a_file_whose_bytes_differ_from_the_hubs_checksum_is_refused_and_pulling_again_mends_it(
    hub: Hub, model: Path, tmp_path: Path, repo: str, name: str
) -> None:
    hf_home, to = tmp_path / "hf", tmp_path / "out"
    env = hub_env(hub, hf_home, HF_HUB_OFFLINE="0")
    hub.corrupt.add((repo, name))
    try:
        result = pull(env, repo, "--to", str(to))
    finally:
        hub.corrupt.discard((repo, name))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert name in result.stderr and "differs from the hub's" in result.stderr and "pull again" in result.stderr
    assert not to.exists()
    # Nothing bad stays in the cache: the advice works.
    again = pull(env, repo, "--to", str(to))
    assert again.returncode == 0, again.stderr
    assert (to / name).read_bytes() == (model / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["tinyorg/absent"], ["tinyorg/absent: no such model on the hub", "check the id", "hf auth login"]),
        (["tinyorg/gated"], ["tinyorg/gated is gated: accept its conditions on {url}/tinyorg/gated", "HF_TOKEN"]),
        (["tinyorg/tiny-st", "--revision", "v9"], ["tinyorg/tiny-st has no revision 'v9'", "branch, tag or commit"]),
    ],
)
def test_an_unknown_or_gated_model_ends_the_pull_with_what_to_do(
    hub: Hub, tmp_path: Path, args: list[str], said: list[str]
) -> None:
    result = pull(hub_env(hub, tmp_path / "hf", HF_HUB_OFFLINE="0"), *args, "--to", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for words in said:
        assert words.format(url=hub.url) in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_worker_downloads_an_hf_path_at_start_where_the_hub_is_reachable(
    hub: Hub, model: Path, redis_server: RedisServer, r: redis.Redis, tmp_path: Path
) -> None:
    repo, hf_home = "tinyorg/worker", tmp_path / "hf"
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.tiny]\nfamily = "text-dense"\npath = "hf:{repo}"\n')
    env = base_env(
        redis_server.url,
        registry,
        HF_HOME=str(hf_home),
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        EMBEDSTREAM_THREADS="1",
    )
    got = embed_one(env, tmp_path, r, "downloaded at start")
    assert len(hub.gets(repo, WEIGHTS)) == 1
    assert sha256(cached_blob(hf_home, repo, sha256(model / WEIGHTS))) == sha256(model / WEIGHTS)
    assert np.abs(got - reference(model, "downloaded at start")).max() <= 1e-5
