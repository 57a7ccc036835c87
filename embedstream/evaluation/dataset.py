"""Labelled retrieval datasets: a BEIR folder, a CSV of (query, relevant document) pairs, or the shipped sample.

Every malformed input raises :class:`DatasetError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

#: The labelled sample that ships in the package (BEIR layout).
SAMPLE = "eval-sample"


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class Dataset:
    """Documents and queries by id, and graded relevance: qrels[query id][doc id] = grade (> 0 relevant)."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load(path: Path, split: str = "test") -> Dataset:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a .csv of pairs."""
    if path.is_dir():
        return load_beir(path, split)
    if path.suffix.lower() == ".csv":
        return load_pairs(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    raise DatasetError(f"{path}: give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a .csv of pairs")


def sample() -> Dataset:
    """The small labelled dataset shipped in the package (everyday and technical topics)."""
    folder = resources.files("embedstream") / "data" / SAMPLE
    with resources.as_file(folder) as path:
        return load_beir(path, "test", name="sample")


def load_beir(folder: Path, split: str = "test", name: str = "") -> Dataset:
    """A BEIR dataset; a title, when present, is prepended to the text as BEIR's evaluators do."""
    corpus: dict[str, str] = {}
    for where, record in _jsonl(folder / "corpus.jsonl"):
        title = _field(record, "title", where, required=False)
        text = _field(record, "text", where)
        corpus[_id(record, where, corpus)] = f"{title} {text}" if title else text
    queries: dict[str, str] = {}
    for where, record in _jsonl(folder / "queries.jsonl"):
        queries[_id(record, where, queries)] = _field(record, "text", where)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DatasetError(f"{qrels_path}: no such file (splits found: {', '.join(found) or 'none'}); see --split")
    qrels = _qrels(qrels_path, corpus, queries)
    return _checked(Dataset(name or folder.name, corpus, {q: queries[q] for q in qrels}, qrels), qrels_path)


def load_pairs(path: Path) -> Dataset:
    """A CSV with a header holding ``query`` and ``document`` columns, one relevant pair a row.

    Each distinct document text becomes a document and each distinct query a query; a
    query listed with several documents has them all as relevant (grade 1).
    """
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    with _open(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("query", "document") if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}:1: the header has no {' or '.join(map(repr, missing))} column")
        doc_ids: dict[str, str] = {}
        query_ids: dict[str, str] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            query, document = (row.get(c) or "" for c in ("query", "document"))
            for column, value in (("query", query), ("document", document)):
                if not value.strip():
                    raise DatasetError(f"{where}: field {column!r} is empty")
            did = doc_ids.setdefault(document, f"d{len(doc_ids)}")
            qid = query_ids.setdefault(query, f"q{len(query_ids)}")
            corpus[did], queries[qid] = document, query
            qrels.setdefault(qid, {})[did] = 1
    return _checked(Dataset(path.stem, corpus, queries, qrels), path)


def _checked(data: Dataset, where: Path) -> Dataset:
    if not data.qrels:
        raise DatasetError(f"{where}: no query has a relevant document")
    return data


def _open(path: Path) -> Any:
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror or exc}") from None


def _jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{n}: not JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{n}: expected a JSON object")
            out.append((f"{path}:{n}", record))
    if not out:
        raise DatasetError(f"{path}: no records")
    return out


def _field(record: dict[str, Any], name: str, where: str, required: bool = True) -> str:
    value = record.get(name, None if required else "")
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {name!r} is {'missing' if value is None else 'not a string'}")
    if required and not value.strip():
        raise DatasetError(f"{where}: field {name!r} is empty")
    return value


def _id(record: dict[str, Any], where: str, seen: dict[str, str]) -> str:
    value = record.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: field '_id' is {'missing' if value is None else 'not a string'}")
    if value in seen:
        raise DatasetError(f"{where}: field '_id': {value!r} appears twice")
    return value


def _qrels(path: Path, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            cells = line.rstrip("\r\n").split("\t")
            if (n == 1 and cells[0] == "query-id") or not line.strip():
                continue
            where = f"{path}:{n}"
            if len(cells) != 3:
                raise DatasetError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            qid, did, score = cells
            if qid not in queries:
                raise DatasetError(f"{where}: field 'query-id': {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise DatasetError(f"{where}: field 'corpus-id': {did!r} is not in corpus.jsonl")
            try:
                grade = int(score)
            except ValueError:
                raise DatasetError(f"{where}: field 'score': {score!r} is not an integer") from None
            if grade > 0:
                qrels.setdefault(qid, {})[did] = grade
    return qrels
