"""Every runnable block of the docs, run against one live ``embedstream serve`` of tiny models, and a second
family giving its reference vectors every way the docs call it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from embedstream.redis_server import free_port
from tests.support import ROOT, documents, media, tinyheads, tinymodels
from tests.support.documents import DOCUMENTS, Block
from tests.support.images import picture
from tests.support.processes import base_env, wait_until

BLOCKS = [block for doc in DOCUMENTS for block in documents.blocks(doc)]
SHELL = [b for b in BLOCKS if b.lang == "sh" and b.runnable]
PYTHON_PAGES = sorted({b.doc for b in BLOCKS if b.lang == "python" and b.runnable})

READY = re.compile(r"^embedstream ready: ", re.M)
#: Registry folders of docs/models.md's example, by the tiny model that stands in for each.
TINY = {
    "/models/e5-small-v2": lambda root: tinymodels.bert(root / "e5", "dense", hidden_size=384),
    "/models/ViT-B-32": lambda root: tinymodels.open_clip_model(root / "clip"),
    "/models/bge-m3": lambda root: tinyheads.bge_m3(root / "bge-m3"),
    "/models/splade-v3": lambda root: tinymodels.bert(root / "splade", "splade"),
    "/models/colbert": lambda root: tinymodels.colbert(root / "colbert"),
    "/models/ms-marco-MiniLM-L6": lambda root: tinymodels.bert(root / "rerank", "xenc"),
    "/models/clap-htsat-unfused": lambda root: tinymodels.clap_model(root / "clap"),
    "/models/sentiment": lambda root: tinymodels.classifier(root / "sentiment", ["negative", "neutral", "positive"]),
}
METRICS_PORTS = 12  # 9464 ... 9471 in the docs: the gateway, then each worker in registry order (room for more)


@dataclass(frozen=True)
class Served:
    """The service the runnable blocks call, and how to run a block as a reader would."""

    port: int
    http: int
    metrics: int
    env: dict[str, str]
    scratch: Path
    models: Path

    def rewrite(self, code: str) -> str:
        """The docs' addresses (gRPC 50051, HTTP 8080, metrics 9464 + n) become this service's."""
        code = code.replace("50051", str(self.port)).replace("localhost:8080", f"localhost:{self.http}")
        return re.sub(r"\b94(6[4-9]|7[01])\b", lambda m: str(self.metrics + int(m.group(0)) - 9464), code)

    def run(self, what: str, args: list[str]) -> None:
        """Run a block's command in the scratch folder, as a reader's shell would; it must exit 0."""
        done = subprocess.run(args, env=self.env, cwd=self.scratch, capture_output=True, text=True, timeout=240)
        report = f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        assert done.returncode == 0, f"{what} exited {done.returncode}\n{report}"


def _free_run(count: int, avoid: set[int]) -> int:
    """The first of ``count`` consecutive free ports, none of them in ``avoid``."""
    for base in range(20000, 60000, 97):
        if avoid & set(range(base, base + count)):
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def _registry(models: Path) -> str:
    """docs/models.md's example registry, its /models/... folders replaced by tiny models."""
    (toml,) = [b.code for b in documents.blocks(documents.DOCS / "models.md") if b.lang == "toml"]
    # An example whose folder has no tiny stand-in here (a decoder embedder, say) is left out.
    entries = re.split(r"(?m)^(?=\[models\.)", toml)
    toml = "".join(e for e in entries if not re.search(r'^path = "/models/', e, re.M) or any(f in e for f in TINY))
    for folder, build in TINY.items():
        assert f'"{folder}"' in toml, f"docs/models.md's registry no longer names {folder}"
        toml = toml.replace(f'"{folder}"', json.dumps(str(build(models))))
    return toml


def _scratch(folder: Path) -> Path:
    """The files the examples name, as a reader would have them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"document number {i} about embeddings and streams" for i in range(40)]
    folder.mkdir()
    (folder / "corpus.txt").write_text("\n".join(texts) + "\n")
    records = [json.dumps({"doc_id": f"d{i}", "body": text}) for i, text in enumerate(texts)]
    (folder / "docs.jsonl").write_text("\n".join(records) + "\n")
    (folder / "table.csv").write_text("text\n" + "\n".join(texts) + "\n")
    pq.write_table(pa.table({"text": texts}), folder / "big.parquet")
    (folder / "cat.jpg").write_bytes(picture(0, size=(640, 480), fmt="JPEG"))
    (folder / "clips").mkdir()
    (folder / "clips" / "intro.mp4").write_bytes(media.video((2.0, 1.5, 2.5)))
    (folder / "clips" / "outro.webm").write_bytes(media.video((1.0, 1.0), fmt="webm"))
    (folder / "podcast").mkdir()
    (folder / "podcast" / "episode.wav").write_bytes(media.audio(media.tones([(6.0, 440), (6.0, 660)], 16000), 16000))
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("docs")
    registry = root / "models.toml"
    registry.write_text(_registry(root / "models"))
    port = free_port()
    http = _free_run(1, avoid={port})
    metrics = _free_run(METRICS_PORTS, avoid={port, http})
    env = base_env("", registry, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_METRICS_PORT=str(metrics))
    env["EMBEDSTREAM_HTTP_PORT"] = str(http)
    del env["EMBEDSTREAM_REDIS_URL"]
    del env["EMBEDSTREAM_CACHE_BYTES"]  # the embedding cache as `make run` serves it: on
    log = root / "serve.log"
    args = [sys.executable, "-m", "embedstream", "serve", "--port", str(port), "--data-dir", str(root / "data")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return READY.search(log.read_text()) is not None

        wait_until(ready, 400, interval=0.5, what="embedstream serve's ready line")
        assert "FAILED" not in log.read_text().split("embedstream ready:")[-1], log.read_text()
        bin_dir = str(Path(sys.executable).parent)
        block_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
        block_env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", EMBEDSTREAM_PORT=str(port))
        block_env.update(VIRTUAL_ENV=str(Path(bin_dir).parent), HF_HUB_OFFLINE="1")
        yield Served(port, http, metrics, block_env, _scratch(root / "scratch"), root / "models")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in the terminal that runs `make run`
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", SHELL, ids=[b.where for b in SHELL])
def test_a_runnable_shell_block_exits_0(served: Served, block: Block) -> None:
    served.run(block.where, ["bash", "-e", "-o", "pipefail", "-c", served.rewrite(block.code)])


#: Runs one page's Python blocks in order in one namespace; a traceback names the block's page and line.
DRIVER = """
import json, sys
namespace = {"__name__": "__main__"}
for where, code in json.load(open(sys.argv[1])):
    print(f"--- {where}", flush=True)
    exec(compile(code, where, "exec"), namespace)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PYTHON_PAGES])
def test_the_runnable_python_blocks_of_a_page_exit_0(served: Served, page: Path, tmp_path: Path) -> None:
    runnable = [b for b in documents.blocks(page) if b.lang == "python" and b.runnable]
    (tmp_path / "blocks.json").write_text(json.dumps([(b.where, served.rewrite(b.code)) for b in runnable]))
    python = Path(served.env["VIRTUAL_ENV"]) / "bin" / "python"
    served.run(page.name, [str(python), "-c", DRIVER, str(tmp_path / "blocks.json")])


def _mean_pooled(folder: Path, texts: list[str]) -> np.ndarray:
    """transformers' own BertModel on ``folder``: mean over the attention mask, L2-normalized
    (what docs/models.md's e5-small lines, pooling = "mean" and normalize = true, ask for)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_family_gives_its_reference_vectors_every_way_the_docs_call_it(served: Served) -> None:
    """The first hour's promise: a second model (docs/models.md's e5-small, a plain transformers
    folder) served by the docs' registry gives transformers' vectors through grpcurl-style JSON
    (`embedstream call`), the Python client, `embed-file` and curl on /v1/embeddings."""
    texts = ["the first text", "a second, longer text about streams, queues and vectors"]
    want = _mean_pooled(served.models / "e5", texts)
    bin_dir = Path(served.env["VIRTUAL_ENV"]) / "bin"

    def output(args: list[str]) -> str:
        done = subprocess.run(args, env=served.env, cwd=served.scratch, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{args[:3]} exited {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout

    request = json.dumps({"model": "e5-small", "inputs": [{"text": t} for t in texts]})
    called = json.loads(
        output(
            [
                str(bin_dir / "embedstream"),
                "call",
                "-plaintext",
                "-d",
                request,
                f"localhost:{served.port}",
                "embedstream.v1.Embedder/Embed",
            ]
        )
    )
    got = {"call": np.array([e["values"] for e in called["embeddings"]], dtype=np.float32)}

    from embedstream.client import Client

    with Client(f"127.0.0.1:{served.port}") as client:
        got["client"] = np.asarray(client.embed(texts, model="e5-small"), dtype=np.float32)

    (served.scratch / "two.txt").write_text("\n".join(texts) + "\n")
    out = served.scratch / "two.npy"
    output(
        [
            str(bin_dir / "embedstream"),
            "embed-file",
            "two.txt",
            "--model",
            "e5-small",
            "-o",
            out.name,
            "--target",
            f"127.0.0.1:{served.port}",
            "--no-progress",
        ]
    )
    got["embed-file"] = np.load(out)

    body = json.dumps({"model": "e5-small", "input": texts})
    answer = json.loads(
        output(
            [
                "curl",
                "-sS",
                "--fail-with-body",
                f"http://localhost:{served.http}/v1/embeddings",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ]
        )
    )
    got["curl"] = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    for way, vectors in got.items():
        assert vectors.shape == want.shape, (way, vectors.shape)
        assert np.abs(vectors - want).max() < 1e-5, way
