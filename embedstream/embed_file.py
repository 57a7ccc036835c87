"""`embedstream embed-file`: embed every record of a file, resumably, with a true progress bar.

Inputs: .txt (a line each), .jsonl, .csv and .parquet (the text in ``--field``), or a
folder of video and audio files (``embedstream/embed_media.py``: one Parquet table of segments).
Outputs: .npy (a float32 matrix), .parquet (id + vector) or .jsonl.

Several requests are in flight at once (``--concurrency``), and each block of vectors is
written at its own row offset the moment its request completes (:mod:`embedstream.rowfile`):
the bar counts rows really done, Ctrl-C keeps every finished row, and the same command run
again embeds only the rows still missing. With ``--job`` the corpus is uploaded as an async
job and its results, which come in input order, fill the file from the front.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstream.client import Client, EmbedstreamError, Sampling
from embedstream.client.media import DEFAULT as DEFAULT_SAMPLING
from embedstream.progress import Progress
from embedstream.records import INPUTS, Scan, records, scan, texts
from embedstream.rowfile import RowFile
from embedstream.tls import TLS

OUTPUTS = (".npy", ".parquet", ".jsonl")
#: Rows of job results written (and made durable) at a time.
JOB_BLOCK = 256


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
    concurrency: int = 8
    skip_empty: bool = False
    progress: bool = True
    tls: TLS | None = None
    #: A folder of video and audio files: how clips become segments (``embedstream.embed_media``).
    sampling: Sampling = DEFAULT_SAMPLING
    #: The server's embedding cache: "default", "bypass" or "refresh" (vectors are the same either way).
    cache: str = "default"


def run(opts: Options) -> int:
    """Embed the file (or the folder of clips); returns the exit code."""
    if opts.input.is_dir():
        from embedstream import embed_media

        return embed_media.run(opts, opts.sampling)
    if opts.input.suffix.lower() not in INPUTS:
        raise ValueError(f"{opts.input}: input must end in one of {', '.join(INPUTS)}")
    if opts.output.suffix.lower() not in OUTPUTS:
        raise ValueError(f"{opts.output}: output must end in one of {', '.join(OUTPUTS)}")
    if opts.batch_size < 1 or opts.concurrency < 1:
        raise ValueError("--batch-size and --concurrency must be at least 1")
    found = scan(opts.input, opts.field, opts.skip_empty)
    if found.skipped:
        print(found.report(), file=sys.stderr)
    if not found.kept:
        raise ValueError(f"{opts.input}: no records to embed")
    rows = RowFile(opts.output, found.kept, _identity(opts))
    if rows.resumed:
        print(f"resuming: {rows.finished} of {rows.rows} rows were done", file=sys.stderr)
    bar = Progress(rows.rows, opts.output.name, enabled=opts.progress, unit="rows")
    bar.start_at(rows.finished)
    try:
        with Client(opts.target, model=opts.model, tls=opts.tls) as client:
            (_by_job if opts.job else _concurrently)(client, opts, rows, bar)
    except KeyboardInterrupt:
        bar.close()
        if rows.finished or rows.job_id:
            rows.save()
            rows.close()
            print(
                f"interrupted with {rows.finished} of {rows.rows} rows done; "
                "run the same command again to embed the rest",
                file=sys.stderr,
            )
        else:
            rows.remove()
            print("interrupted before any row was done", file=sys.stderr)
        return 130
    except BaseException:
        bar.close()
        if rows.finished or rows.resumed:
            rows.save()
            rows.close()
        else:  # nothing worth resuming: leave no partial files behind
            rows.remove()
        raise
    bar.close()
    rows.save()
    rows.close()
    if rows.finished != rows.rows:
        print(f"embedded {rows.finished} rows but the input has {rows.rows}", file=sys.stderr)
        return 1
    _write(opts, found, rows.matrix())
    rows.remove()
    print(f"wrote {rows.rows} vectors of {rows.dims} dimensions to {opts.output}", file=sys.stderr)
    return 0


def _identity(opts: Options) -> dict[str, Any]:
    """What must match for a rerun to resume instead of starting over."""
    stat = opts.input.stat()
    return {
        "input": str(opts.input.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime_ns,
        "model": opts.model,
        "field": opts.field,
        "job": opts.job,
        "skip_empty": opts.skip_empty,
    }


def _concurrently(client: Client, opts: Options, rows: RowFile, bar: Progress) -> None:
    """Unary Embed calls, ``concurrency`` in flight, each block written where it belongs as it completes."""
    pool = cf.ThreadPoolExecutor(opts.concurrency, thread_name_prefix="embed-file")
    pending: dict[cf.Future[Any], int] = {}
    try:
        for start, chunk in _missing_chunks(texts(opts.input, opts.field, opts.skip_empty), rows, opts.batch_size):
            while len(pending) >= opts.concurrency:
                _collect(pending, rows, bar, opts)
            pending[pool.submit(client.embed, chunk, model=opts.model, cache=opts.cache)] = start
        while pending:
            _collect(pending, rows, bar, opts)
    finally:
        # Ctrl-C or an error: calls already running finish, and their rows are kept too.
        pool.shutdown(wait=True, cancel_futures=True)
        for future, start in pending.items():
            if not future.cancelled() and future.exception() is None:
                rows.write(start, _dense(future.result(), opts))
        rows.save()


def _collect(pending: dict[cf.Future[Any], int], rows: RowFile, bar: Progress, opts: Options) -> None:
    """Wait for at least one call; write every finished block, then record them as done."""
    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
    failed: BaseException | None = None
    for future in done:
        start = pending.pop(future)
        if future.exception() is not None:
            failed = failed or future.exception()
            continue
        rows.write(start, _dense(future.result(), opts))
    rows.save()
    bar.update(rows.finished)
    if failed is not None:
        raise failed


def _missing_chunks(items: Iterator[str], rows: RowFile, size: int) -> Iterator[tuple[int, list[str]]]:
    """(first row, texts) of at most ``size`` consecutive rows not done yet."""
    done = [tuple(r) for r in rows.done]
    starts = [a for a, _ in done]
    first = 0
    chunk: list[str] = []
    for row, text in enumerate(items):
        i = bisect.bisect_right(starts, row) - 1
        if i >= 0 and row < done[i][1]:
            continue
        if chunk and (row != first + len(chunk) or len(chunk) == size):
            yield first, chunk
            chunk = []
        if not chunk:
            first = row
        chunk.append(text)
    if chunk:
        yield first, chunk


def _by_job(client: Client, opts: Options, rows: RowFile, bar: Progress) -> None:
    """One async job for the whole file; its in-order results fill the rows from the first missing one."""
    if rows.job_id:
        try:
            handle = client.job(rows.job_id)
        except EmbedstreamError as exc:
            raise ValueError(
                f"job {rows.job_id} recorded in {rows.state_path} cannot be read ({exc}); "
                f"delete {rows.state_path} and {rows.raw} to start over"
            ) from None
    else:
        handle = client.upload_job(texts(opts.input, opts.field, opts.skip_empty), model=opts.model, cache=opts.cache)
        rows.save_job(handle.id)
    offset = rows.prefix
    block: list[np.ndarray] = []
    for _, vector in handle.results(offset=offset):
        block.append(_dense(vector, opts))
        if len(block) == JOB_BLOCK:
            rows.write(offset, np.stack(block))
            offset += len(block)
            block = []
            rows.save()
            bar.update(rows.finished)
    if block:
        rows.write(offset, np.stack(block))
        rows.save()
    bar.update(rows.finished)


def _dense(result: object, opts: Options) -> np.ndarray:
    """``result`` as dense vectors; embed-file cannot store sparse or multi-vector embeddings."""
    if not isinstance(result, np.ndarray):
        raise ValueError(
            f"model {opts.model or '(default)'} returns sparse or multi-vector embeddings; "
            "embed-file writes dense vectors only (use the Python client for those)"
        )
    return result


def _ids(opts: Options, found: Scan) -> list[Any]:
    """The id of each kept record: its record number, or its ``--id-field``."""
    if not opts.id_field:
        return list(found.kept_rows())
    skipped = set(found.skipped)
    return [r.get(opts.id_field) for n, r in enumerate(records(opts.input, opts.field)) if n not in skipped]


def _write(opts: Options, found: Scan, matrix: np.ndarray) -> None:
    tmp = opts.output.with_name(opts.output.name + ".tmp")
    suffix = opts.output.suffix.lower()
    if suffix == ".npy":
        with tmp.open("wb") as f:
            np.save(f, np.asarray(matrix, dtype=np.float32))
        if found.skipped:
            # A matrix has no ids: say which record each row came from.
            np.save(opts.output.with_suffix(".rows.npy"), np.fromiter(found.kept_rows(), dtype=np.int64))
            print(f"record number of each row: {opts.output.with_suffix('.rows.npy')}", file=sys.stderr)
    elif suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for rid, row in zip(_ids(opts, found), matrix):
                f.write(json.dumps({"id": rid, "embedding": row.tolist()}) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(np.asarray(matrix, dtype=np.float32).reshape(-1))
        vectors = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
        pq.write_table(pa.table({"id": _ids(opts, found), "embedding": vectors}), tmp)
    tmp.replace(opts.output)
