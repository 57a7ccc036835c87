"""The records of an input file for `embed-file`: .txt (a line each), .jsonl, .csv and .parquet."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUTS = (".txt", ".jsonl", ".csv", ".parquet")


def records(path: Path, field: str) -> Iterator[dict[str, Any]]:
    """The input's records, read lazily; a .txt line is {field: line}."""
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


@dataclass
class Scan:
    """What one pass over the input found: how many records, and which were skipped as empty."""

    records: int = 0
    skipped: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        """Records that will be embedded."""
        return self.records - len(self.skipped)

    def kept_rows(self) -> Iterator[int]:
        """The record number of each kept record, in order."""
        skipped = set(self.skipped)
        return (n for n in range(self.records) if n not in skipped)

    def report(self) -> str:
        """One line naming the skipped records (the first few), or ''."""
        if not self.skipped:
            return ""
        shown = ", ".join(str(n) for n in self.skipped[:10]) + (", ..." if len(self.skipped) > 10 else "")
        return f"skipped {len(self.skipped)} empty record(s) (record numbers from 0: {shown})"


def texts(path: Path, field: str, skip_empty: bool, scan: Scan | None = None) -> Iterator[str]:
    """The text of each kept record; a record without ``field``, or empty without ``skip_empty``, is an
    error naming it. ``scan`` (if given) counts what was read."""
    scan = scan if scan is not None else Scan()
    for n, record in enumerate(records(path, field)):
        scan.records = n + 1
        value = record.get(field)
        if not isinstance(value, str):
            raise ValueError(f"{path}: record {n} has no text field {field!r}")
        if not value.strip():
            if skip_empty:
                scan.skipped.append(n)
                continue
            raise ValueError(
                f"{path}: record {n} (line {n + 1} of a .txt) has empty text; the service refuses it "
                "(--skip-empty leaves such records out)"
            )
        yield value


def scan(path: Path, field: str, skip_empty: bool) -> Scan:
    """Read the whole input once before anything is sent: every record has its text (parquet: its
    schema, and its text column when skipping empty records)."""
    if path.suffix.lower() == ".parquet" and not skip_empty:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        if field not in meta.schema_arrow.names:
            raise ValueError(f"{path}: no text field {field!r} (columns: {meta.schema_arrow.names})")
        return Scan(int(meta.metadata.num_rows))
    found = Scan()
    for _ in texts(path, field, skip_empty, found):
        pass
    return found
