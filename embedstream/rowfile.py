"""The vectors `embed-file` has finished so far: a preallocated float32 file and the rows done in it.

``OUT.partial`` holds ``rows * dims`` little-endian float32 values; a block of vectors is written
at its own row offset whenever its request completes, in any order. ``OUT.progress.json``
records which row ranges are done, written only after their bytes are on disk: a crash or
Ctrl-C keeps every finished row, and a rerun of the same command embeds only what is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class RowFile:
    """The partial output of one input file (``identity`` says which; another starts afresh)."""

    def __init__(self, output: Path, rows: int, identity: dict[str, Any]) -> None:
        self.raw = output.with_name(output.name + ".partial")
        self.state_path = output.with_name(output.name + ".progress.json")
        self.rows = rows
        self.identity = identity
        self.dims = 0
        self.job_id = ""
        self.done: list[list[int]] = []  # sorted, disjoint [start, end) row ranges
        self.resumed = False
        if self.state_path.exists() and self.raw.exists():
            state = json.loads(self.state_path.read_text())
            if state.get("identity") == identity and state.get("rows") == rows:
                self.dims, self.job_id, self.done = state["dims"], state.get("job_id", ""), state.get("done", [])
                self.resumed = True
        self._fd = -1
        if self.dims:
            self._open()

    @property
    def finished(self) -> int:
        """Rows done."""
        return sum(end - start for start, end in self.done)

    @property
    def prefix(self) -> int:
        """Rows done without a gap from row 0 (where an in-order reader resumes)."""
        return self.done[0][1] if self.done and self.done[0][0] == 0 else 0

    def missing(self) -> Iterator[tuple[int, int]]:
        """The [start, end) row ranges not done yet, in order."""
        at = 0
        for start, end in self.done:
            if start > at:
                yield at, start
            at = end
        if at < self.rows:
            yield at, self.rows

    def write(self, start: int, block: np.ndarray) -> None:
        """Put ``block`` (n, dims) at row ``start``; it counts as done once :meth:`save` ran."""
        if not self.dims:
            self.dims = int(block.shape[1])
            self._open()
        if block.shape[1] != self.dims:
            raise ValueError(f"the model returned {block.shape[1]} dimensions after {self.dims}")
        os.pwrite(self._fd, np.ascontiguousarray(block, dtype="<f4").tobytes(), start * self.dims * 4)
        self._mark(start, start + block.shape[0])

    def save(self) -> None:
        """Make the written rows durable, then record them as done."""
        if self._fd < 0:
            return
        os.fsync(self._fd)
        state = {"identity": self.identity, "rows": self.rows, "dims": self.dims, "job_id": self.job_id}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state | {"done": self.done}))
        tmp.replace(self.state_path)

    def save_job(self, job_id: str) -> None:
        """Record the job whose results fill this file, before any result arrives."""
        self.job_id = job_id
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "rows": self.rows, "dims": 0, "job_id": job_id}))
        tmp.replace(self.state_path)
        self.raw.touch()

    def close(self) -> None:
        """Close the raw file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def matrix(self) -> np.ndarray:
        """The finished rows, memory-mapped."""
        return np.memmap(self.raw, dtype="<f4", mode="r", shape=(self.rows, self.dims))

    def remove(self) -> None:
        """Delete the partial files (the output is written, or nothing was done)."""
        self.close()
        for path in (self.raw, self.state_path, self.state_path.with_name(self.state_path.name + ".tmp")):
            path.unlink(missing_ok=True)

    def _open(self) -> None:
        self._fd = os.open(self.raw, os.O_RDWR | os.O_CREAT, 0o644)
        # Sparse preallocation: blocks land at their own offsets in any order.
        os.ftruncate(self._fd, self.rows * self.dims * 4)

    def _mark(self, start: int, end: int) -> None:
        ranges = sorted([*self.done, [start, end]])
        merged: list[list[int]] = []
        for a, b in ranges:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.done = merged
