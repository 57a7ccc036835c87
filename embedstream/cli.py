"""The `embedstream` command: serve, gateway, worker, check, embed-file, eval, api-key, redis-acl."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedstream import acl, apikeys, logs
from embedstream.errors import ConfigError
from embedstream.settings import Settings, env_help
from embedstream.tls import TLS


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(
            redis_url=getattr(args, "redis_url", None),
            port=getattr(args, "port", None),
            http_port=getattr(args, "http_port", None),
            registry=getattr(args, "registry", None),
            threads=getattr(args, "threads", None),
        )
        command: str = args.command
        logs.setup(settings.log_level, settings.log_format, command)
        return int(COMMANDS[command](settings, args))
    except ConfigError as exc:
        print(f"embedstream: configuration error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
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
    embed.add_argument("input", help=".txt (a line each), .jsonl, .csv or .parquet")
    embed.add_argument("--output", "-o", required=True, help=".npy, .parquet (id + vector) or .jsonl")
    embed.add_argument("--model", default="", help="model name (default: the server's default model)")
    embed.add_argument("--field", default="text", help="the text field of .jsonl/.csv/.parquet records")
    embed.add_argument("--id-field", default="", help="field to use as id in .parquet/.jsonl output (default: row)")
    embed.add_argument("--job", action="store_true", help="submit as an async job and collect its results")
    embed.add_argument("--batch-size", type=int, default=64, help="texts per streamed request")
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
    _add(sub, "redis-acl", help="print the ACL SETUSER commands of the gateway and worker Redis users")
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


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    return _role("embedstream.gateway.main")(settings)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    return _role("embedstream.workers.main")(settings, args.model)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from embedstream.supervisor import serve

    return serve(settings, Path(args.data_dir))


def _role(module: str) -> Callable[..., int]:
    """The ``run`` of a role's main module. The CLI names roles instead of importing them, so the
    shared layer never imports up into embedstream.gateway or embedstream.workers."""
    run: Callable[..., int] = importlib.import_module(module).run
    return run


def _embed_file(settings: Settings, args: argparse.Namespace) -> int:
    from embedstream.embed_file import Options, run

    opts = Options(
        input=Path(args.input),
        output=Path(args.output),
        target=args.target or f"127.0.0.1:{settings.port}",
        model=args.model,
        field=args.field,
        id_field=args.id_field,
        job=args.job,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        tls=_tls(args),
    )
    return _exit_code("embed-file", lambda: run(opts))


def _eval(settings: Settings, args: argparse.Namespace) -> int:
    from embedstream.evaluation import Options, run

    opts = Options(
        target=args.target or f"127.0.0.1:{settings.port}",
        dataset=None if args.sample else Path(args.dataset),
        split=args.split,
        models=args.model or [""],
        dimensions=args.dimensions,
        output_types=args.output_type,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        timeout=args.timeout,
        json_path=Path(args.json),
        chart_path=Path(args.chart),
        progress=not args.no_progress,
        tls=_tls(args),
    )
    return _exit_code("eval", lambda: run(opts))


def _exit_code(command: str, work: Callable[[], int]) -> int:
    """Run a client command: bad input or files exit 2 with the reason, a failed call 1 with its status."""
    import grpc

    try:
        return work()
    except (ValueError, OSError) as exc:
        print(f"embedstream {command}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"embedstream {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _call(settings: Settings, args: argparse.Namespace) -> int:
    import grpc

    from embedstream.call import Call, run

    try:
        return run(Call(args.target, args.method, args.data, tuple(args.headers), _tls(args), args.max_time))
    except (ValueError, OSError) as exc:
        print(f"embedstream call: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"ERROR:\n  Code: {exc.code().name}\n  Message: {exc.details()}", file=sys.stderr)
        return 1


def _check(settings: Settings, args: argparse.Namespace) -> int:
    if args.worker:
        return _check_worker(settings, args)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{args.host}:{settings.port}"
    tls = _tls(args)
    try:
        if tls is None:
            channel = grpc.insecure_channel(target)
        else:
            channel = grpc.secure_channel(target, tls.credentials(), options=tls.options())
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=2
            )
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{target}: TLS: {exc}", file=sys.stderr)
        return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target} {args.service or '(overall)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _check_worker(settings: Settings, args: argparse.Namespace) -> int:
    """A worker's liveness (event loop ticking) or readiness (Redis heartbeat written), from
    the timestamps it exports; the probe for a process that serves no gRPC."""
    import re
    import time
    import urllib.request

    if not settings.metrics_port:
        print("check --worker needs the worker's EMBEDSTREAM_METRICS_PORT", file=sys.stderr)
        return 2
    url = f"http://{args.host}:{settings.metrics_port}/metrics"
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    name = (
        "embedstream_worker_heartbeat_timestamp_seconds" if args.ready else "embedstream_worker_alive_timestamp_seconds"
    )
    stamps = [float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", body, flags=re.MULTILINE)]
    age = time.time() - max(stamps) if stamps and max(stamps) > 0 else float("inf")
    what = "heartbeat in Redis" if args.ready else "event loop"
    print(f"worker {what}: {'never' if age == float('inf') else f'{age:.1f} s ago'}")
    return 0 if age <= args.max_age else 1


def _tls(args: argparse.Namespace) -> TLS | None:
    """The TLS options of ``check``/``embed-file``; None speaks plaintext."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _api_key(settings: Settings, args: argparse.Namespace) -> int:
    path = args.file or settings.api_keys_file
    if args.action == "new":
        return _new_key(path, args)
    if not path:
        raise ConfigError("api-key revoke needs --file or EMBEDSTREAM_API_KEYS_FILE")
    if args.hash is not None and len(args.hash) < 8:
        raise ConfigError("--hash: give at least 8 characters of the key's SHA-256")
    removed = apikeys.remove(
        path,
        lambda e: (
            not (
                (args.hash is not None and e.digest.startswith(args.hash.lower()))
                or (args.name is not None and e.name == args.name)
                or (args.tenant is not None and e.tenant == args.tenant)
            )
        ),
    )
    print(f"removed {removed} key(s) from {path}; gateways stop accepting them within seconds", file=sys.stderr)
    return 0 if removed else 1


def _new_key(path: str, args: argparse.Namespace) -> int:
    key = apikeys.new_key()
    entry = apikeys.Entry(apikeys.check_tenant(args.tenant), apikeys.digest(key), args.rate, args.burst, args.name)
    apikeys.parse(entry.line(), "the new entry")  # the same checks a gateway makes
    if path:
        try:
            apikeys.append(path, entry)
        except OSError as exc:
            print(f"embedstream api-key: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"added a key for tenant {entry.tenant} to {path}; it is shown only now:", file=sys.stderr)
    else:
        print(
            "no key file (--file, EMBEDSTREAM_API_KEYS_FILE); add this entry to EMBEDSTREAM_API_KEYS:", file=sys.stderr
        )
        print(f"  {entry.line()}", file=sys.stderr)
    print(key)
    return 0


def _redis_acl(settings: Settings, args: argparse.Namespace) -> int:
    print(acl.render(), end="")
    return 0


COMMANDS = {
    "serve": _serve,
    "gateway": _gateway,
    "worker": _worker,
    "check": _check,
    "call": _call,
    "embed-file": _embed_file,
    "eval": _eval,
    "api-key": _api_key,
    "redis-acl": _redis_acl,
}
