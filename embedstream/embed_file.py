"""`embedstream embed-file`: embed every record of a file, resumably, with a progress bar.

Inputs: .txt (a line each), .jsonl, .csv and .parquet (the text in ``--field``).
Outputs: .npy (a float32 matrix), .parquet (id + vector) or .jsonl. Vectors are
appended to ``OUT.partial`` as they arrive, and ``OUT.progress.json`` records
how many rows are done (and the job id with ``--job``): after an interruption
the same command resumes where it stopped instead of starting over.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstream.client import Client
from embedstream.progress import Progress
from embedstream.tls import TLS

INPUTS = (".txt", ".jsonl", ".csv", ".parquet")
OUTPUTS = (".npy", ".parquet", ".jsonl")


@dataclass
class Options:
    """What to embed, where to, and how."""

    input: Path
    output: Path
    target: str
    model: str = ""
    field: str = "text"
    id_field: str = ""
    job: bool = False
    batch_size: int = 64
    progress: bool = True
    tls: TLS | None = None


def records(path: Path, field: str) -> Iterator[dict[str, Any]]:
    """The input's records, read lazily; a .txt line is {"text": line}."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            for line in f:
                yield {field: line.rstrip("\r\n")}
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
    else:
        raise ValueError(f"{path}: input must end in one of {', '.join(INPUTS)}")


def texts(path: Path, field: str) -> Iterator[str]:
    """The text of each record; a record without ``field`` is an error naming it."""
    for n, record in enumerate(records(path, field)):
        value = record.get(field)
        if not isinstance(value, str):
            raise ValueError(f"{path}: record {n} has no text field {field!r}")
        if not value.strip():
            raise ValueError(f"{path}: record {n} (line {n + 1} of a .txt) has empty text; the service refuses it")
        yield value


def count(path: Path, field: str) -> int:
    """Records in the input, for the progress bar; also checks every record has its text
    before anything is sent (parquet: its schema and footer only)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        if field not in meta.schema_arrow.names:
            raise ValueError(f"{path}: no text field {field!r} (columns: {meta.schema_arrow.names})")
        return int(meta.metadata.num_rows)
    return sum(1 for _ in texts(path, field))


class Partial:
    """The raw float32 rows written so far and the progress record beside them."""

    def __init__(self, opts: Options) -> None:
        self.raw = opts.output.with_name(opts.output.name + ".partial")
        self.state_path = opts.output.with_name(opts.output.name + ".progress.json")
        stat = opts.input.stat()
        self.identity = {
            "input": str(opts.input.resolve()),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
            "model": opts.model,
            "field": opts.field,
            "job": opts.job,
        }
        self.rows, self.dims, self.job_id = 0, 0, ""
        if self.state_path.exists() and self.raw.exists():
            state = json.loads(self.state_path.read_text())
            if state.get("identity") == self.identity:
                self.rows, self.dims, self.job_id = state["rows"], state["dims"], state.get("job_id", "")
        # Rows past the recorded count may be half-written: cut them.
        with self.raw.open("ab") as f:
            f.truncate(self.rows * self.dims * 4)
        self._file = self.raw.open("ab")

    def append(self, block: np.ndarray) -> None:
        """Add rows (n, dims) and record them as done."""
        if not self.dims:
            self.dims = block.shape[1]
        self._file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        self.rows += block.shape[0]

    def save(self) -> None:
        """Make the rows durable, then record how many there are."""
        self._file.flush()
        os.fsync(self._file.fileno())
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"identity": self.identity, "rows": self.rows, "dims": self.dims, "job_id": self.job_id})
        )
        tmp.replace(self.state_path)

    def close(self) -> None:
        """Close the raw file."""
        self._file.close()

    def matrix(self) -> np.ndarray:
        """The finished rows, memory-mapped."""
        return np.memmap(self.raw, dtype="<f4", mode="r", shape=(self.rows, self.dims))

    def remove(self) -> None:
        """Delete the partial files once the output is written."""
        self.raw.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)


def run(opts: Options) -> int:
    """Embed the file; returns the exit code."""
    if opts.input.suffix.lower() not in INPUTS:
        raise ValueError(f"{opts.input}: input must end in one of {', '.join(INPUTS)}")
    if opts.output.suffix.lower() not in OUTPUTS:
        raise ValueError(f"{opts.output}: output must end in one of {', '.join(OUTPUTS)}")
    total = count(opts.input, opts.field)
    partial = Partial(opts)
    if partial.rows:
        print(f"resuming at row {partial.rows} of {total}", file=sys.stderr)
    bar = Progress(total, opts.output.name, enabled=opts.progress)
    bar.update(partial.rows, force=True)
    try:
        with Client(opts.target, model=opts.model, tls=opts.tls) as client:
            pending = itertools.islice(texts(opts.input, opts.field), partial.rows, None)
            if opts.job:
                _by_job(client, opts, partial, pending, bar)
            else:
                for block in client.embed_stream(pending, batch_size=opts.batch_size):
                    partial.append(block)
                    bar.update(partial.rows)
                    if bar.done % 4096 < block.shape[0]:
                        partial.save()
        partial.save()
    except KeyboardInterrupt:
        partial.save()
        partial.close()
        bar.close()
        print(f"interrupted after {partial.rows} rows; run the same command again to resume", file=sys.stderr)
        return 130
    partial.close()
    bar.close()
    if partial.rows != total:
        print(f"embedded {partial.rows} rows but the input has {total}", file=sys.stderr)
        return 1
    _write(opts, partial.matrix())
    partial.remove()
    print(f"wrote {total} vectors of {partial.dims} dimensions to {opts.output}", file=sys.stderr)
    return 0


def _by_job(client: Client, opts: Options, partial: Partial, pending: Iterator[str], bar: Progress) -> None:
    if partial.job_id:
        handle = client.job(partial.job_id)
    else:
        handle = client.upload_job(pending)
        partial.job_id = handle.id
        partial.save()
    block: list[np.ndarray] = []
    for _, vector in handle.results(offset=partial.rows):
        block.append(vector)
        if len(block) == 1024:
            partial.append(np.stack(block))
            partial.save()
            block = []
            bar.update(partial.rows)
    if block:
        partial.append(np.stack(block))


def _ids(opts: Options, n: int) -> list[Any]:
    if not opts.id_field:
        return list(range(n))
    return [record.get(opts.id_field) for record in records(opts.input, opts.field)]


def _write(opts: Options, matrix: np.ndarray) -> None:
    tmp = opts.output.with_name(opts.output.name + ".tmp")
    suffix = opts.output.suffix.lower()
    if suffix == ".npy":
        with tmp.open("wb") as f:
            np.save(f, np.asarray(matrix, dtype=np.float32))
    elif suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for rid, row in zip(_ids(opts, len(matrix)), matrix):
                f.write(json.dumps({"id": rid, "embedding": row.tolist()}) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(np.asarray(matrix, dtype=np.float32).reshape(-1))
        vectors = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
        pq.write_table(pa.table({"id": _ids(opts, len(matrix)), "embedding": vectors}), tmp)
    tmp.replace(opts.output)
