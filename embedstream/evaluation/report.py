"""The evaluation's outputs: a terminal table, a JSON file and a PNG chart comparing the candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedstream.evaluation.metrics import MEASURES

#: The quality measure the chart plots.
HEADLINE = "nDCG@10"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def table(results: list[dict[str, Any]]) -> str:
    """A fixed-width table: one row per candidate, quality then speed."""
    head = ["candidate", "dims", *MEASURES, "docs/s", "query p50 ms", "query p99 ms"]
    rows = [
        [
            r["candidate"],
            str(r["dimensions"]),
            *(f"{r['metrics'][m]:.4f}" for m in MEASURES),
            f"{r['corpus']['texts_per_s']:,.1f}",
            f"{r['queries']['p50_ms']:.1f}",
            f"{r['queries']['p99_ms']:.1f}",
        ]
        for r in results
    ]
    widths = [max(len(line[i]) for line in [head, *rows]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def write_json(path: Path, report: dict[str, Any]) -> None:
    """The whole report, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def chart(path: Path, results: list[dict[str, Any]], title: str) -> None:
    """Quality vs throughput, and quality vs dimensions when a model was evaluated at several sizes."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        key = r["model"] if r["output_type"] == "float32" else f"{r['model']} {r['output_type']}"
        series.setdefault(key, []).append((r["dimensions"], r["metrics"][HEADLINE]))
    sized = {k: sorted(v) for k, v in series.items() if len({d for d, _ in v}) > 1}
    fig, axes = plt.subplots(1, 2 if sized else 1, figsize=(12 if sized else 6.5, 4.8), squeeze=False)
    ax = axes[0][0]
    for r in results:
        ax.scatter(r["corpus"]["texts_per_s"], r["metrics"][HEADLINE], s=40)
        ax.annotate(
            r["candidate"],
            (r["corpus"]["texts_per_s"], r["metrics"][HEADLINE]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    speeds = [r["corpus"]["texts_per_s"] for r in results]
    if min(speeds) > 0 and max(speeds) / min(speeds) > 20:
        ax.set_xscale("log")  # sparse and multi-vector models can be 100x slower than small dense ones
    ax.set_xlabel("throughput (documents/s, through the service)")
    ax.set_ylabel(HEADLINE)
    ax.set_title("quality vs throughput")
    ax.grid(alpha=0.3)
    if sized:
        ax = axes[0][1]
        for key, points in sized.items():
            ax.plot([d for d, _ in points], [v for _, v in points], marker="o", label=key)
        ax.set_xlabel("dimensions")
        ax.set_ylabel(HEADLINE)
        ax.set_title("quality vs dimensions")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
