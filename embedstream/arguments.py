"""The `embedstream` command line: every subcommand's arguments, help and defaults (``embedstream.cli`` runs them)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from embedstream.settings import env_help


def parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand, its flags and their help."""
    parser = argparse.ArgumentParser(
        prog="embedstream",
        description="Self-hosted embedding inference over gRPC, queued through Redis streams.",
        epilog="Environment (flags win over variables):\n"
        + env_help()
        + "\n\nembed-file sends EMBEDSTREAM_API_KEY as its API key when that variable is set.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Subcommand)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="Redis URL (EMBEDSTREAM_REDIS_URL)")
    common.add_argument("--registry", help="model registry TOML (EMBEDSTREAM_REGISTRY)")
    serve = _add(sub, "serve", parents=[common], help="Redis (unless --redis-url), a gateway and a worker per model")
    serve.add_argument("--port", type=int, help="gRPC port (EMBEDSTREAM_PORT, default 50051)")
    serve.add_argument("--http-port", type=int, help="HTTP port (EMBEDSTREAM_HTTP_PORT, default 8080; -1: off)")
    serve.add_argument("--data-dir", default=".embedstream", help="where the private Redis keeps its AOF")
    serve.add_argument("--threads", type=int, help="torch threads per worker (EMBEDSTREAM_THREADS)")
    gateway = _add(sub, "gateway", parents=[common], help="run one gateway")
    gateway.add_argument("--port", type=int, help="gRPC port (EMBEDSTREAM_PORT, default 50051)")
    gateway.add_argument("--http-port", type=int, help="HTTP port (EMBEDSTREAM_HTTP_PORT, default 8080; -1: off)")
    worker = _add(sub, "worker", parents=[common], help="run one worker for one model")
    worker.add_argument("--model", default="", help="model name from the registry (default: the default model)")
    worker.add_argument("--threads", type=int, help="torch threads (EMBEDSTREAM_THREADS)")
    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--tls", action="store_true", help="speak TLS to the gateway (trusting the system's CAs)")
    tls.add_argument("--tls-ca", help="PEM CA that signed the gateway's certificate (implies --tls)")
    tls.add_argument("--tls-cert", help="PEM client certificate, for a gateway that requires one (mTLS)")
    tls.add_argument("--tls-key", help="PEM key of --tls-cert")
    tls.add_argument("--tls-server-name", default="", help="name to verify in the gateway's certificate")
    embed = _add(sub, "embed-file", parents=[tls], help="embed every record of a file (resumable, with a progress bar)")
    embed.add_argument("input", help=".txt (a line each), .jsonl, .csv or .parquet; or a folder of video/audio files")
    embed.add_argument("--output", "-o", required=True, help=".npy, .parquet (id + vector) or .jsonl")
    embed.add_argument("--model", default="", help="model name (default: the server's default model)")
    embed.add_argument("--field", default="text", help="the text field of .jsonl/.csv/.parquet records")
    embed.add_argument("--id-field", default="", help="field to use as id in .parquet/.jsonl output (default: row)")
    embed.add_argument("--job", action="store_true", help="submit as an async job and collect its results")
    embed.add_argument("--batch-size", type=int, default=64, help="texts per request")
    embed.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    embed.add_argument(
        "--skip-empty",
        action="store_true",
        help="leave out records whose text is empty or blank (reported; ids keep their record numbers)",
    )
    embed.add_argument("--frame-interval", type=float, default=0.0, help="clips: seconds between video frames (1)")
    embed.add_argument("--scenes", action="store_true", help="clips: one video segment per scene (cuts found)")
    embed.add_argument("--window", type=float, default=0.0, help="clips: seconds per audio window (the model's)")
    embed.add_argument("--overlap", type=float, default=None, help="clips: seconds audio windows overlap (1/4)")
    embed.add_argument(
        "--media-output", choices=("segments", "both", "pooled"), default="both", help="clips: rows per file"
    )
    embed.add_argument(
        "--cache",
        choices=("default", "bypass", "refresh"),
        default="default",
        help="the server's embedding cache: use it (default), skip it, or recompute and overwrite",
    )
    embed.add_argument("--target", default="", help="gateway address (default 127.0.0.1:EMBEDSTREAM_PORT)")
    embed.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _eval_parser(sub, tls)
    check = _add(
        sub, "check", parents=[tls], help="exit 0 when the gateway reports SERVING (--worker: the worker is alive)"
    )
    check.add_argument("--host", default="127.0.0.1", help="gateway host (default 127.0.0.1)")
    check.add_argument("--port", type=int, help="gateway port (EMBEDSTREAM_PORT, default 50051)")
    check.add_argument("--service", default="", help="health service name (a model name checks that model)")
    check.add_argument(
        "--worker",
        action="store_true",
        help="check the worker on this host instead, through its /metrics (EMBEDSTREAM_METRICS_PORT): "
        "alive = its event loop ticked recently",
    )
    check.add_argument("--ready", action="store_true", help="with --worker: also its Redis heartbeat is recent")
    check.add_argument("--max-age", type=float, default=30.0, help="with --worker: seconds counted as recent")
    call = _add(sub, "call", parents=[tls], help="call an RPC with JSON, as grpcurl -plaintext -d does")
    call.add_argument(
        "-d", dest="data", default="", help="request JSON; @ reads messages from stdin, @FILE from a file"
    )
    call.add_argument("-H", dest="headers", action="append", default=[], help="a header, 'name: value' (repeatable)")
    call.add_argument("-plaintext", "--plaintext", action="store_true", help="no TLS (the default without --tls*)")
    call.add_argument("-max-time", "--max-time", type=float, default=60.0, help="seconds before the call gives up")
    call.add_argument("target", help="gateway address, host:port")
    call.add_argument("method", help="e.g. embedstream.v1.Embedder/Embed")
    keys = _add(sub, "api-key", help="create or revoke API keys (the key file holds their SHA-256 only)")
    key_sub = keys.add_subparsers(dest="action", required=True)
    new = _add(key_sub, "new", help="print a new key once and append its hash to the key file")
    new.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    new.add_argument("--file", help="key file (default EMBEDSTREAM_API_KEYS_FILE)")
    new.add_argument("--rate", type=float, help="the tenant's inputs per second (default EMBEDSTREAM_RATE_LIMIT)")
    new.add_argument("--burst", type=int, help="the tenant's burst (default EMBEDSTREAM_RATE_BURST)")
    new.add_argument("--name", default="", help="a label for the key")
    revoke = _add(key_sub, "revoke", help="remove keys from the key file (gateways stop accepting them)")
    revoke.add_argument("--file", help="key file (default EMBEDSTREAM_API_KEYS_FILE)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--hash", help="the key's SHA-256, or its first 8+ characters")
    which.add_argument("--name", help="the key's name= label")
    which.add_argument("--tenant", help="every key of this tenant")
    inspect = _add(
        sub, "inspect", help="print how a model folder would be served, without serving it (exit 2: refused)"
    )
    inspect.add_argument("folder", help="the model folder")
    inspect.add_argument(
        "--family",
        default="",
        help="text-dense, image-text, sparse, multi-vector, rerank or classify (default: detected from the folder)",
    )
    inspect.add_argument("--instruction", default="", help="decoder embedders: the task of the query instruction")
    inspect.add_argument("--threads", type=int, help="torch threads (EMBEDSTREAM_THREADS)")
    _add(sub, "redis-acl", help="print the ACL SETUSER commands of the gateway and worker Redis users")
    pull = _add(
        sub,
        "pull",
        help="download a model from the Hugging Face hub (resumable, sha256-checked) and print its registry entry",
    )
    pull.add_argument("repo", help="hub id, like sentence-transformers/all-MiniLM-L6-v2")
    pull.add_argument("--to", help="copy it into this folder (default: it stays in the Hugging Face cache)")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    return parser


class _Defaults(argparse.HelpFormatter):
    """Shows an option's default in --help unless it is empty, off, or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, "", argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Subcommand(argparse.ArgumentParser):
    """A subcommand's parser: --help shows defaults."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(**kwargs)


def _add(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with its one-line help."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kwargs)
    return parser


def _eval_parser(sub: Any, tls: argparse.ArgumentParser) -> None:
    from embedstream.vectors import OUTPUT_TYPES

    ev = _add(
        sub,
        "eval",
        parents=[tls],
        help="retrieval quality (nDCG@10, MRR@10, recall@1/10/100) and speed of served models on labelled data",
    )
    ev.description = (
        f"{ev.description}. Embeds the dataset through the running service with each candidate (every --model x "
        "--dimensions x --output-type), searches it exactly, and prints a table, with the same figures in --json "
        "and a chart in --chart. See docs/eval.md."
    )
    data = ev.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--dataset", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or a .csv with query,document"
    )
    data.add_argument("--sample", action="store_true", help="the small labelled dataset shipped with embedstream")
    ev.add_argument("--split", default="test", help="BEIR qrels split: qrels/SPLIT.tsv (default test)")
    ev.add_argument(
        "--model",
        action="append",
        help="a served model to evaluate; repeat for several (default: the server's default model)",
    )
    ev.add_argument(
        "--dimensions",
        type=_sizes,
        default=[],
        help="comma-separated sizes, each evaluated for every model, e.g. 384,128 (Matryoshka; default: full size)",
    )
    ev.add_argument(
        "--output-type",
        type=_choices(tuple(OUTPUT_TYPES)),
        default=["float32"],
        help=f"comma-separated output types, each evaluated: {', '.join(OUTPUT_TYPES)} (default float32)",
    )
    ev.add_argument("--batch-size", type=int, default=32, help="documents per request (default 32)")
    ev.add_argument("--concurrency", type=int, default=4, help="document requests in flight (default 4)")
    ev.add_argument("--json", default="eval.json", help="where the JSON report goes (default eval.json)")
    ev.add_argument("--chart", default="eval.png", help="where the PNG chart goes (default eval.png)")
    ev.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    ev.add_argument("--target", default="", help="gateway address (default 127.0.0.1:EMBEDSTREAM_PORT)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive sizes, e.g. 384,128")
    return sizes


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [part.strip() for part in text.split(",") if part.strip()]
        wrong = [i for i in items if i not in allowed]
        if wrong or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return items

    return parse
