"""`embedstream embed-file FOLDER`: every video and audio file of a folder into one Parquet table.

Files are found by their extension (video: .mp4 .m4v .webm .mkv; audio: .wav .flac .mp3
.ogg .opus), in sorted order, under the folder and its subfolders. Each clip is one Embed
call, ``--concurrency`` at once; with ``--job`` the clips of each kind are uploaded as one
async job instead (long videos, large folders). The table has a row per segment: ``file``
(relative to the folder), ``segment`` (its number; the pooled vector is the row after the
last segment), ``start`` and ``end`` (seconds), ``pooled``, ``frames``, and ``vector``.
A file the service refuses is reported with its reason and left out; the exit code is then 1
(with ``--job`` the gateway refuses the upload whole, naming the file: exit code 2).
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from embedstream.client import Client, EmbedstreamError, MediaEmbedding, Sampling
from embedstream.progress import Progress

VIDEO = (".mp4", ".m4v", ".webm", ".mkv")
AUDIO = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def clips(folder: Path) -> list[tuple[Path, str]]:
    """(file, "video" or "audio") of every clip under ``folder``, sorted."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in VIDEO or suffix in AUDIO:
            found.append((path, "video" if suffix in VIDEO else "audio"))
    return found


def run(opts: Any, sampling: Sampling) -> int:
    """Embed the folder ``opts.input`` into the Parquet file ``opts.output``; the exit code."""
    if opts.output.suffix.lower() != ".parquet":
        raise ValueError(f"{opts.output}: a folder of clips is written as .parquet")
    found = clips(opts.input)
    if not found:
        raise ValueError(f"{opts.input}: no video ({' '.join(VIDEO)}) or audio ({' '.join(AUDIO)}) files")
    done: dict[Path, MediaEmbedding] = {}
    failed: dict[Path, str] = {}
    bar = Progress(len(found), opts.output.name, enabled=opts.progress, unit="files")
    try:
        with Client(opts.target, model=opts.model, tls=opts.tls) as client:
            (_by_job if opts.job else _concurrently)(client, opts, sampling, found, done, failed, bar)
    finally:
        bar.close()
    for path, reason in failed.items():
        print(f"{path.relative_to(opts.input)}: {reason}", file=sys.stderr)
    rows = _write(opts.output, opts.input, [(p, done[p]) for p, _ in found if p in done])
    print(f"wrote {rows} segments of {len(done)} files to {opts.output}", file=sys.stderr)
    return 1 if failed else 0


def _concurrently(
    client: Client,
    opts: Any,
    sampling: Sampling,
    found: list[tuple[Path, str]],
    done: dict[Path, MediaEmbedding],
    failed: dict[Path, str],
    bar: Progress,
) -> None:
    with cf.ThreadPoolExecutor(opts.concurrency, thread_name_prefix="embed-media") as pool:
        calls = {pool.submit(client.embed_media, [p], kind=k, model=opts.model, sampling=sampling): p for p, k in found}
        for future in cf.as_completed(calls):
            path = calls[future]
            try:
                done[path] = future.result()[0]
            except EmbedstreamError as exc:
                failed[path] = str(exc)
            bar.update(len(done) + len(failed))


def _by_job(
    client: Client,
    opts: Any,
    sampling: Sampling,
    found: list[tuple[Path, str]],
    done: dict[Path, MediaEmbedding],
    failed: dict[Path, str],
    bar: Progress,
) -> None:
    for kind in ("video", "audio"):
        paths = [p for p, k in found if k == kind]
        if not paths:
            continue
        try:
            handle = client.upload_media_job(paths, kind=kind, model=opts.model, sampling=sampling)
        except EmbedstreamError as exc:  # the gateway refused the upload: name the file, not the input
            found_index = re.search(r"inputs\[(\d+)\]", str(exc))
            if found_index is None:
                raise
            bad = paths[int(found_index.group(1))].relative_to(opts.input)
            raise ValueError(
                f"{bad}: {exc}; a job is refused whole (without --job, the other files are embedded)"
            ) from None
        handle.wait()
        offset = 0  # results come in input order: a failure is the input at offset
        while offset < len(paths):
            try:
                for got, result in handle.results(offset):
                    assert isinstance(result, MediaEmbedding)
                    done[paths[got]] = result
                    offset = got + 1
                    bar.update(len(done) + len(failed))
                break
            except RuntimeError as exc:
                failed[paths[offset]] = str(exc)
                offset += 1
                bar.update(len(done) + len(failed))


def _write(output: Path, root: Path, results: list[tuple[Path, MediaEmbedding]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, segments, starts, ends, pooled, frames, vectors = [], [], [], [], [], [], []
    for path, emb in results:
        name = path.relative_to(root).as_posix()
        for n in range(len(emb)):
            files.append(name)
            segments.append(n)
            starts.append(float(emb.start_s[n]))
            ends.append(float(emb.end_s[n]))
            pooled.append(False)
            frames.append(int(emb.frames[n]))
            vectors.append(emb.vectors[n])
        if emb.pooled is not None:
            files.append(name)
            segments.append(len(emb))
            starts.append(0.0)
            ends.append(emb.duration_s)
            pooled.append(True)
            frames.append(int(emb.frames.sum()))
            vectors.append(emb.pooled)
    dims = len(vectors[0]) if vectors else 0
    flat = pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "file": pa.array(files, pa.string()),
            "segment": pa.array(segments, pa.int32()),
            "start": pa.array(starts, pa.float64()),
            "end": pa.array(ends, pa.float64()),
            "pooled": pa.array(pooled, pa.bool_()),
            "frames": pa.array(frames, pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dims),
        }
    )
    pq.write_table(table, output)
    return len(files)
