"""`embedstream eval`: embed a labelled dataset through the service with each candidate, search, measure.

For each candidate the corpus is embedded in requests of ``batch_size`` documents with
``concurrency`` requests in flight (throughput: documents per second over that phase),
then each query alone in its own request, as a search front end sends them (latency:
p50/p99 of those requests). One unrecorded query warms the path first.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from embedstream.client import Client
from embedstream.evaluation import dataset as datasets
from embedstream.evaluation import encode, metrics, report, scoring
from embedstream.evaluation.encode import KINDS, OUTPUT_TYPES, Candidate
from embedstream.progress import Progress
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb

#: Retrieval depth: every measure's cutoff is at most this.
DEPTH = 100


class CandidateError(ValueError):
    """A --model/--dimensions/--output-type combination the service cannot serve."""


@dataclass
class Options:
    """What to evaluate, against which gateway, and where the results go."""

    target: str
    dataset: Path | None = None  # None: the shipped sample
    split: str = "test"
    models: list[str] = field(default_factory=lambda: [""])
    dimensions: list[int] = field(default_factory=list)
    output_types: list[str] = field(default_factory=lambda: ["float32"])
    batch_size: int = 32
    concurrency: int = 4
    timeout: float = 60.0
    json_path: Path = Path("eval.json")
    chart_path: Path = Path("eval.png")
    progress: bool = True
    tls: TLS | None = None


def candidates(served: list[pb.ModelInfo], opts: Options) -> list[Candidate]:
    """Every model x size x output type asked for that the model serves, in that order.

    A size or output type that one model does not serve is skipped for it with a note (a
    model without Matryoshka sizes is evaluated at its full size; a sparse model returns
    float32 only); one that no model serves, or a Matryoshka model none of whose sizes is
    listed, is an error.
    """
    names = {alias: m for m in served for alias in (m.name, *m.aliases)}
    default = next((m for m in served if m.is_default), None)
    out: list[Candidate] = []
    used_sizes: set[int] = set()
    used_types: set[str] = set()
    for name in opts.models:
        info = names.get(name) if name else default
        if info is None:
            listed = ", ".join(sorted(m.name for m in served)) or "none"
            raise CandidateError(f"--model {name or '(default)'}: not served at {opts.target} (served: {listed})")
        kind = KINDS.get(info.family)
        if kind is None:
            family = pb.ModelFamily.Name(info.family)
            raise CandidateError(f"--model {info.name}: a {family} model returns no embeddings to search")
        sizes = sorted({info.dimensions, *info.capabilities.matryoshka_dimensions} - {0}, reverse=True)
        types = [t for t, v in OUTPUT_TYPES.items() if v in info.capabilities.output_types]
        # A model without Matryoshka sizes is still compared, at its one size.
        cuttable = bool(opts.dimensions and info.capabilities.matryoshka_dimensions)
        wanted_sizes = [s for s in opts.dimensions if s in sizes] if cuttable else [info.dimensions]
        if cuttable and not wanted_sizes:
            raise CandidateError(f"--dimensions: model {info.name} accepts {sizes}, none of {opts.dimensions}")
        wanted_types = [t for t in opts.output_types if t in types]
        skipped = [str(s) for s in opts.dimensions if s not in wanted_sizes]
        skipped += [t for t in opts.output_types if t not in types]
        if skipped:
            print(
                f"note: model {info.name} skips {', '.join(skipped)} (sizes {sizes}, output types {', '.join(types)})",
                file=sys.stderr,
            )
        used_sizes.update(wanted_sizes)
        used_types.update(wanted_types)
        for size in wanted_sizes:
            for output_type in wanted_types:
                candidate = Candidate(info.name, kind, size, size != info.dimensions, output_type)
                if candidate not in out:
                    out.append(candidate)
    unserved = [str(s) for s in opts.dimensions if s not in used_sizes]
    if unserved:
        raise CandidateError(f"--dimensions: no model evaluated serves {', '.join(unserved)}")
    if any(t not in used_types for t in opts.output_types):
        unused = ", ".join(t for t in opts.output_types if t not in used_types)
        raise CandidateError(f"--output-type: no model evaluated returns {unused}")
    return out


def evaluate(client: Client, candidate: Candidate, data: datasets.Dataset, opts: Options) -> dict[str, Any]:
    """Embed, search and measure one candidate; its record in the report."""
    doc_ids, query_ids = list(data.corpus), list(data.queries)
    bar = Progress(len(doc_ids) + len(query_ids), candidate.name, enabled=opts.progress)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar.update(done)

    def run(texts: list[str], query: bool, batch: int, concurrency: int, step: Any = advance) -> Any:
        return encode.embed(client.stub, candidate, texts, query, batch, concurrency, opts.timeout, step)

    run([data.queries[query_ids[0]]], True, 1, 1, lambda n: None)  # warm-up, not recorded
    docs, corpus_timing = run([data.corpus[d] for d in doc_ids], False, opts.batch_size, opts.concurrency)
    queries, query_timing = run([data.queries[q] for q in query_ids], True, 1, 1)
    bar.close()
    started = time.perf_counter()
    found = scoring.search(candidate.kind, queries, docs, query_ids, doc_ids, DEPTH)
    search_s = time.perf_counter() - started
    return {
        "candidate": candidate.name,
        "model": candidate.model,
        "kind": candidate.kind,
        "dimensions": candidate.dimensions,
        "output_type": candidate.output_type,
        "metrics": metrics.compute(data.qrels, found),
        "corpus": {
            "texts": corpus_timing.texts,
            "seconds": round(corpus_timing.wall_s, 4),
            "texts_per_s": corpus_timing.texts / max(corpus_timing.wall_s, 1e-9),
            "request_p50_ms": report.percentile(corpus_timing.latencies_ms, 50),
            "request_p99_ms": report.percentile(corpus_timing.latencies_ms, 99),
        },
        "queries": {
            "texts": query_timing.texts,
            "p50_ms": report.percentile(query_timing.latencies_ms, 50),
            "p99_ms": report.percentile(query_timing.latencies_ms, 99),
        },
        "search_seconds": round(search_s, 4),
    }


def run(opts: Options) -> int:
    """Evaluate every candidate; print the table, write the JSON and the chart. Returns the exit code."""
    data = datasets.load(opts.dataset, opts.split) if opts.dataset else datasets.sample()
    with Client(opts.target, tls=opts.tls, timeout=opts.timeout) as client:
        chosen = candidates(client.list_models(), opts)
        print(
            f"{data.name}: {len(data.corpus)} documents, {len(data.queries)} labelled queries; "
            f"{len(chosen)} candidate(s)",
            file=sys.stderr,
        )
        results = [evaluate(client, c, data, opts) for c in chosen]
    print(report.table(results))
    report.write_json(
        opts.json_path,
        {
            "dataset": data.name,
            "documents": len(data.corpus),
            "queries": len(data.queries),
            "target": opts.target,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics_library": f"ir-measures {metadata.version('ir-measures')}",
            "settings": {"batch_size": opts.batch_size, "concurrency": opts.concurrency, "depth": DEPTH},
            "candidates": results,
        },
    )
    report.chart(opts.chart_path, results, f"{data.name}: {len(data.corpus)} documents, {len(data.queries)} queries")
    print(f"wrote {opts.json_path} and {opts.chart_path}", file=sys.stderr)
    return 0
