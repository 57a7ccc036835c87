"""`embedstream embed-file`: formats, progress, resume after Ctrl-C, job mode."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from embedstream.workers.debug import debug_vectors

from embedstream.client import Client
from tests.conftest import Service
from tests.support import ROOT
from tests.support.corpora import texts
from tests.support.processes import wait_until


def embed_file(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "embedstream", "embed-file", *args, "--target", f"127.0.0.1:{service.port}"]
    return subprocess.run(cmd, env=service.env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_20000_lines_with_the_real_model_resume_after_ctrl_c(service: Service, tmp_path: Path) -> None:
    lines = texts(20_000, seed=31, min_words=2, max_words=6)
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "vectors.npy"
    cmd = [
        sys.executable,
        "-m",
        "embedstream",
        "embed-file",
        str(source),
        "--output",
        str(out),
        "--target",
        f"127.0.0.1:{service.port}",
    ]
    first = subprocess.Popen(cmd, env=service.env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "vectors.npy.progress.json"
    wait_until(lambda: progress.exists() and json.loads(progress.read_text())["rows"] >= 4000, 300, what="progress")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "interrupted after" in err
    done_before = json.loads(progress.read_text())["rows"]
    assert 4000 <= done_before < 20_000 and not out.exists()
    second = embed_file(service, str(source), "--output", str(out))
    assert second.returncode == 0, second.stderr
    assert f"resuming at row {done_before}" in second.stderr
    assert "20000/20000" in second.stderr and "items/s" in second.stderr and "ETA" in second.stderr
    got = np.load(out)
    with Client(f"127.0.0.1:{service.port}") as client:
        expected = np.concatenate(list(client.embed_stream(lines)))
    assert got.shape == (20_000, 384)
    assert np.abs(got - expected).max() <= 1e-4
    assert not progress.exists() and not (tmp_path / "vectors.npy.partial").exists()


def test_formats_and_job_mode_with_the_debug_model(service: Service, tmp_path: Path) -> None:
    corpus = texts(3000, seed=32)
    expected = debug_vectors(corpus, 64, [True] * len(corpus))
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"doc": f"d{i}", "body": t}) + "\n" for i, t in enumerate(corpus)))
    result = embed_file(
        service,
        str(jsonl),
        "-o",
        str(tmp_path / "out.parquet"),
        "--model",
        "debug",
        "--field",
        "body",
        "--id-field",
        "doc",
        "--job",
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(3000)]
    assert np.abs(np.array(table.column("embedding").to_pylist(), dtype=np.float32) - expected).max() <= 1e-6

    with (tmp_path / "in.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([t] for t in corpus)
    result = embed_file(service, str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.jsonl"), "--model", "debug")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(3000))
    assert np.abs(np.array([r["embedding"] for r in rows], dtype=np.float32) - expected).max() <= 1e-6

    pq.write_table(pa.table({"text": corpus}), tmp_path / "in.parquet")
    result = embed_file(service, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.npy"), "--model", "debug")
    assert result.returncode == 0, result.stderr
    assert np.abs(np.load(tmp_path / "out.npy") - expected).max() <= 1e-6


def test_bad_inputs_exit_2_with_the_reason(service: Service, tmp_path: Path) -> None:
    (tmp_path / "in.docx").write_text("x")
    result = embed_file(service, str(tmp_path / "in.docx"), "-o", str(tmp_path / "o.npy"))
    assert result.returncode == 2 and "input must end in" in result.stderr
    (tmp_path / "in.jsonl").write_text('{"title": "no text field"}\n')
    result = embed_file(service, str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.npy"))
    assert result.returncode == 2 and "text field 'text'" in result.stderr
    (tmp_path / "in.txt").write_text("fine\n\nalso fine\n")
    result = embed_file(service, str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"))
    assert result.returncode == 2 and "record 1 (line 2" in result.stderr
    result = embed_file(
        service, str(tmp_path / "in.txt").replace("in.txt", "missing.txt"), "-o", str(tmp_path / "o.npy")
    )
    assert result.returncode == 2 and "missing.txt" in result.stderr
