"""`embedstream eval`: measures against hand computation, scoring, datasets, and real runs through the service."""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from embedstream.evaluation import DatasetError, compute, load, maxsim_scores, sample, search, sparse_scores
from embedstream.evaluation.scoring import as_float
from embedstream.redis_server import RedisServer
from embedstream.vectors import quantize
from tests.conftest import Service
from tests.support import ROOT, tinymodels
from tests.support.processes import Proc, base_env, start_gateway, start_workers

DOC = ROOT / "docs" / "eval.md"


def doc_commands() -> list[str]:
    """Every `embedstream eval` command in docs/eval.md."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("embedstream eval")]


def run_eval(command: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    args = shlex.split(command.replace("HOST:PORT", f"127.0.0.1:{port}"))
    assert args[:2] == ["embedstream", "eval"]
    cmd = [sys.executable, "-m", "embedstream", *args[1:]]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_measures_equal_a_hand_computed_example() -> None:
    qrels = {"q1": {"d1": 2, "d3": 1}, "q2": {"d4": 1, "d5": 1}, "q3": {"d2": 1}}
    run = {
        "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.1},  # relevant at ranks 2 (grade 2) and 3 (grade 1)
        "q2": {"d4": 0.9, "d1": 0.5},  # one of two relevant at rank 1; d5 never retrieved
    }  # q3 is labelled but unanswered: it counts as zero
    ndcg_q1 = (2 / math.log2(3) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(2)) / (1 / math.log2(2) + 1 / math.log2(3))
    expected = {
        "nDCG@10": (ndcg_q1 + ndcg_q2 + 0) / 3,
        "MRR@10": (1 / 2 + 1 / 1 + 0) / 3,
        "R@1": (0 / 2 + 1 / 2 + 0) / 3,
        "R@10": (2 / 2 + 1 / 2 + 0) / 3,
        "R@100": (2 / 2 + 1 / 2 + 0) / 3,
    }
    got = compute(qrels, run)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # MRR@10 stops at rank 10: a first relevant document at rank 11 scores zero.
    deep = {"q": {f"x{i}": 1 - i / 100 for i in range(10)} | {"hit": 0.001}}
    assert compute({"q": {"hit": 1}}, deep)["MRR@10"] == 0.0


def test_maxsim_and_sparse_dot_equal_hand_computation() -> None:
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    doc_a = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)  # best per query vector: 1.0, 0.5
    doc_b = np.array([[0.0, 2.0]], dtype=np.float32)  # 0.0, 2.0
    assert maxsim_scores([query], [doc_a, doc_b]).tolist() == [[1.5, 2.0]]

    def sp(ids: list[int], weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
        return np.array(ids), np.array(weights, dtype=np.float32)

    docs = [sp([1, 3], [0.5, 4.0]), sp([5, 7], [3.0, 1.0]), sp([2], [9.0])]
    queries = [sp([1, 5], [2.0, 1.0]), sp([7, 40], [1.0, 1.0])]
    assert sparse_scores(queries, docs).tolist() == [[2 * 0.5, 1 * 3.0, 0.0], [0.0, 1.0, 0.0]]
    run = search("sparse", queries, docs, ["qa", "qb"], ["a", "b", "c"], k=2)
    assert run["qa"] == {"b": 3.0, "a": 1.0}


def test_exact_dense_search_and_quantized_scoring() -> None:
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(5, 24)).astype(np.float32)
    run = search("dense", queries, docs, [f"q{i}" for i in range(5)], [f"d{i}" for i in range(300)], k=7)
    for i in range(5):
        best = np.argsort(-(docs @ queries[i]))[:7]
        assert sorted(run[f"q{i}"], key=run[f"q{i}"].__getitem__, reverse=True) == [f"d{j}" for j in best]
    assert len(search("dense", queries, docs[:3], list("abcde"), list("xyz"), k=100)["a"]) == 3
    # Binary types decode to ±1 per bit: their dot product is dims - 2 * Hamming distance.
    vecs = rng.normal(size=(4, 20)).astype(np.float32)
    for kind in ("binary", "ubinary"):
        signs = as_float(quantize(vecs, kind).tobytes(), kind, 20)
        assert np.array_equal(signs, np.where(vecs > 0, 1.0, -1.0))
    assert np.array_equal(
        as_float(quantize(vecs, "uint8").tobytes(), "uint8", 20), as_float(quantize(vecs, "int8").tobytes(), "int8", 20)
    )


def write_beir(folder: Path, corpus: list[dict[str, str]], queries: list[dict[str, str]], qrels: list[str]) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(r + "\n" for r in qrels))
    return folder


def test_datasets_load_and_malformed_ones_name_file_line_and_field(tmp_path: Path) -> None:
    folder = write_beir(
        tmp_path / "beir",
        [{"_id": "a", "title": "Cats", "text": "purr."}, {"_id": "b", "text": "Dogs bark."}],
        [{"_id": "1", "text": "cat noises"}, {"_id": "2", "text": "unlabelled"}],
        ["1\ta\t1", "1\tb\t0"],
    )
    data = load(folder)
    assert data.corpus == {"a": "Cats purr.", "b": "Dogs bark."}
    assert data.queries == {"1": "cat noises"} and data.qrels == {"1": {"a": 1}}
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('query,document\nq one,doc A\nq one,"doc B, with a comma"\nq two,doc A\n')
    data = load(pairs)
    assert sorted(data.corpus.values()) == ["doc A", "doc B, with a comma"] and len(data.queries) == 2
    assert sorted(len(v) for v in data.qrels.values()) == [1, 2]
    shipped = sample()
    assert len(shipped.corpus) >= 100 and len(shipped.queries) >= 40

    cases = [
        ("corpus.jsonl", '{"_id": "a"}\n', "corpus.jsonl:1: field 'text' is missing"),
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "corpus.jsonl:2: field '_id'"),
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{oops\n', "corpus.jsonl:2: not JSON"),
        ("queries.jsonl", '{"text": "q"}\n', "queries.jsonl:1: field '_id' is missing"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\n1\tzzz\t1\n", "test.tsv:2: field 'corpus-id': 'zzz'"),
        ("qrels/test.tsv", "1\ta\thigh\n", "test.tsv:1: field 'score': 'high'"),
        ("qrels/test.tsv", "1 a 1\n", "test.tsv:1: expected 3 tab-separated fields"),
    ]
    for name, text, needle in cases:
        broken = shutil.copytree(folder, tmp_path / f"broken-{len(list(tmp_path.iterdir()))}")
        (broken / name).write_text(text)
        with pytest.raises(DatasetError, match=re.escape(needle)):
            load(broken)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("question,answer\na,b\n")
    with pytest.raises(DatasetError, match=r"bad.csv:1: the header has no 'query' or 'document' column"):
        load(bad_csv)
    bad_csv.write_text("query,document\na,b\n,c\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: field 'query' is empty"):
        load(bad_csv)
    with pytest.raises(DatasetError, match=r"splits found: test"):
        load(folder, "dev")
    # The command stops with exit 2 before it reaches any gateway (nothing listens on port 9).
    (folder / "corpus.jsonl").write_text('{"_id": "a", "txt": "typo"}\n')
    cmd = [sys.executable, "-m", "embedstream", "eval", "--dataset", str(folder), "--target", "127.0.0.1:9"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "corpus.jsonl:1: field 'text' is missing" in result.stderr


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_sample_eval_with_the_default_model_and_every_doc_command(service: Service, tmp_path: Path) -> None:
    commands = [c for c in doc_commands() if "small-mrl" not in c]
    assert len(commands) == 3, commands
    sample_cmd = next(c for c in commands if "--sample" in c)
    result = run_eval(sample_cmd, service.port, service.env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "all-MiniLM-L6-v2" in result.stdout and "nDCG@10" in result.stdout
    assert "items/s" in result.stderr  # the progress bar
    report = json.loads((tmp_path / "eval.json").read_text())
    (only,) = report["candidates"]
    assert only["model"] == "all-MiniLM-L6-v2" and only["dimensions"] == 384
    shipped = sample()
    # Random rankings of 159 documents put nDCG@10 near 0.04; a real model must be far above that.
    assert report["documents"] == len(shipped.corpus) and report["queries"] == len(shipped.queries)
    assert only["metrics"]["nDCG@10"] > 0.6 and only["metrics"]["R@100"] > 0.9
    assert only["metrics"]["R@1"] <= only["metrics"]["R@10"] <= only["metrics"]["R@100"]
    assert only["corpus"]["texts_per_s"] > 0 and 0 < only["queries"]["p50_ms"] <= only["queries"]["p99_ms"]
    assert png_size(tmp_path / "eval.png")[0] > 400
    print(result.stdout)

    # The other documented commands, on a BEIR folder (the sample with titles) and a CSV of pairs.
    write_beir(
        tmp_path / "beir-folder",
        [{"_id": d, "title": "", "text": t} for d, t in shipped.corpus.items()],
        [{"_id": q, "text": t} for q, t in shipped.queries.items()],
        [f"{q}\t{d}\t{g}" for q, docs in shipped.qrels.items() for d, g in docs.items()],
    )
    with (tmp_path / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "document"])
        for q, docs in shipped.qrels.items():
            writer.writerows([shipped.queries[q], shipped.corpus[d]] for d in docs)
    for command in commands:
        if command == sample_cmd:
            continue
        result = run_eval(command, service.port, service.env, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        print(result.stdout)
    models = json.loads((tmp_path / "models.json").read_text())["candidates"]
    assert [c["candidate"] for c in models] == [
        "all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2 int8",
        "all-MiniLM-L6-v2 binary",
        "debug",
        "debug int8",
        "debug binary",
    ]
    by_name = {c["candidate"]: c["metrics"]["nDCG@10"] for c in models}
    assert by_name["all-MiniLM-L6-v2"] == pytest.approx(only["metrics"]["nDCG@10"], abs=1e-6)
    assert by_name["all-MiniLM-L6-v2 int8"] > 0.6 and by_name["debug"] < by_name["all-MiniLM-L6-v2 binary"]

    result = run_eval("embedstream eval --sample --model nope --target HOST:PORT", service.port, service.env, tmp_path)
    assert result.returncode == 2 and "--model nope: not served" in result.stderr
    result = run_eval(
        "embedstream eval --sample --dimensions 128 --target HOST:PORT", service.port, service.env, tmp_path
    )
    assert result.returncode == 2 and "--dimensions: no model evaluated serves 128" in result.stderr


TINY_REGISTRY = """
default = "small-mrl"

[models.small-mrl]
family = "text-dense"
path = "{mrl}"
matryoshka_dimensions = [128, 64]

[models.splade]
family = "sparse"
path = "{splade}"

[models.colbert]
family = "multi-vector"
path = "{colbert}"
"""


def small_mrl(folder: Path) -> Path:
    """A tiny 256-dimension sentence-transformers model (tiny BERT, mean pooling, Dense to 256, Normalize)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    hf = tinymodels.bert(folder.parent / f"{folder.name}-hf", "dense")
    torch.manual_seed(0)
    transformer = Transformer(str(hf), max_seq_length=128)
    dense = Dense(transformer.get_embedding_dimension(), 256, activation_function=torch.nn.Identity())
    modules = [transformer, Pooling(transformer.get_embedding_dimension()), dense, Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_port(
    redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, dict[str, str]]]:
    root = tmp_path_factory.mktemp("eval-tiny")
    paths = {"mrl": small_mrl(root / "mrl"), "splade": tinymodels.bert(root / "splade", "splade")}
    paths["colbert"] = tinymodels.colbert(root / "colbert")
    registry = root / "models.toml"
    registry.write_text(TINY_REGISTRY.format(**paths))
    env = base_env(redis_server.url, registry, EMBEDSTREAM_THREADS="1")
    gateway, port = start_gateway(env, root)
    workers: dict[str, Proc] = start_workers(env, root, ["small-mrl", "splade", "colbert"], r)
    yield port, env
    for proc in [gateway, *workers.values()]:
        proc.stop()


def test_matryoshka_sparse_and_multi_vector_models_through_the_service(
    tiny_port: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    (command,) = [c for c in doc_commands() if "small-mrl" in c]
    port, env = tiny_port
    result = run_eval(command, port, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: model splade skips 256, 128, 64" in result.stderr
    assert "note: model colbert skips 256, 64" in result.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    got = [(c["candidate"], c["kind"], c["dimensions"]) for c in report["candidates"]]
    assert got == [
        ("small-mrl", "dense", 256),
        ("small-mrl@128", "dense", 128),
        ("small-mrl@64", "dense", 64),
        ("splade", "sparse", 30522),
        ("colbert", "multi", 128),
    ]
    for c in report["candidates"]:
        assert all(0.0 <= v <= 1.0 for v in c["metrics"].values()), c
        assert c["metrics"]["R@100"] > 0  # 159 documents: the top 100 holds some relevant ones
    # Two panels (quality vs throughput, quality vs dimensions) make the chart twice as wide.
    assert png_size(tmp_path / "eval.png")[0] > 1200
