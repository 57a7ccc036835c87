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
import pytest

from embedstream.client import Client
from embedstream.redis_server import free_port
from embedstream.workers.debug import debug_vectors
from tests.conftest import Service
from tests.support import ROOT
from tests.support.corpora import texts
from tests.support.processes import from_a_terminal, wait_until


def embed_file(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "embedstream", "embed-file", *args, "--target", f"127.0.0.1:{service.port}"]
    return subprocess.run(cmd, env=service.env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def done_rows(progress: Path) -> int:
    """Rows the progress file records as done (0 before it exists)."""
    if not progress.exists():
        return 0
    return sum(end - start for start, end in json.loads(progress.read_text()).get("done", []))


@pytest.mark.timeout(900)  # about 6000 texts through the real model on two shared cores
def test_ctrl_c_keeps_finished_rows_and_a_rerun_embeds_only_the_rest(service: Service, tmp_path: Path) -> None:
    lines = texts(3000, seed=31, min_words=2, max_words=6)
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "vectors.npy"
    cmd = [sys.executable, "-m", "embedstream", "embed-file", str(source), "-o", str(out)]
    first = subprocess.Popen(
        [*cmd, "--target", f"127.0.0.1:{service.port}"],
        env=service.env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=from_a_terminal,
    )
    progress = tmp_path / "vectors.npy.progress.json"
    wait_until(lambda: done_rows(progress) >= 900, 300, what="900 rows done")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    done_before = done_rows(progress)
    assert first.returncode == 130, err
    assert f"interrupted with {done_before} of 3000 rows done" in err
    assert 900 <= done_before < 3000 and not out.exists()
    second = embed_file(service, str(source), "--output", str(out))
    assert second.returncode == 0, second.stderr
    assert f"resuming: {done_before} of 3000 rows were done" in second.stderr
    assert "3000/3000" in second.stderr and "rows/s" in second.stderr
    got = np.load(out)
    with Client(f"127.0.0.1:{service.port}") as client:
        expected = client.embed(lines)  # one uninterrupted run
    assert got.shape == (3000, 384)
    assert np.abs(got - expected).max() <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "vectors.npy"]


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
    assert "3000/3000" in result.stderr.splitlines()[-2]  # the bar's last state, above the summary
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
    assert result.returncode == 2 and "record 1 (line 2" in result.stderr and "--skip-empty" in result.stderr
    result = embed_file(
        service, str(tmp_path / "in.txt").replace("in.txt", "missing.txt"), "-o", str(tmp_path / "o.npy")
    )
    assert result.returncode == 2 and "missing.txt" in result.stderr


def test_skip_empty_leaves_blank_records_out_and_keeps_ids(service: Service, tmp_path: Path) -> None:
    lines = ["first", "", "third", "   ", "fifth"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    result = embed_file(
        service, str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.jsonl"), "--model", "debug", "--skip-empty"
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 2 empty record(s) (record numbers from 0: 1, 3)" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 2, 4]
    expected = debug_vectors(["first", "third", "fifth"], 64, [True] * 3)
    assert np.abs(np.array([r["embedding"] for r in rows], dtype=np.float32) - expected).max() <= 1e-6
    result = embed_file(
        service, str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.npy"), "--model", "debug", "--skip-empty"
    )
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "out.rows.npy").tolist() == [0, 2, 4]
    assert np.abs(np.load(tmp_path / "out.npy") - expected).max() <= 1e-6


def test_a_failed_first_attempt_leaves_no_files_and_says_why_in_one_line(service: Service, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    result = embed_file(service, str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--model", "nope")
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]  # after the bar (text=True shows its redraws as lines)
    assert last.startswith("embedstream embed-file: NOT_FOUND: ") and "nope" in last
    assert "Traceback" not in result.stderr
    closed = free_port()
    cmd = [sys.executable, "-m", "embedstream", "embed-file", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")]
    result = subprocess.run(
        [*cmd, "--target", f"localhost:{closed}"], env=service.env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert (
        f"embedstream embed-file: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:{closed}: connection refused\n"
        in result.stderr
    )
    for flag in ([], ["--job"]):
        result = embed_file(service, str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--model", "nope", *flag)
        assert result.returncode == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
