"""The `embedstream` command and its subcommands (serve, gateway, worker, check, call, embed-file, eval, ...)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from embedstream import acl, apikeys, arguments, logs
from embedstream.errors import ConfigError
from embedstream.settings import Settings
from embedstream.tls import TLS


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = arguments.parser()
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


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    return _role("embedstream.gateway.main")(settings)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    return _role("embedstream.workers.main")(settings, args.model)


def _inspect(settings: Settings, args: argparse.Namespace) -> int:
    return _role("embedstream.workers.inspection")(settings, args.folder, args.family, args.instruction)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from embedstream.supervisor import serve

    return serve(settings, Path(args.data_dir))


def _role(module: str) -> Callable[..., int]:
    """The ``run`` of a role's main module. The CLI names roles instead of importing them, so the
    shared layer never imports up into embedstream.gateway or embedstream.workers."""
    run: Callable[..., int] = importlib.import_module(module).run
    return run


def _embed_file(settings: Settings, args: argparse.Namespace) -> int:
    from embedstream.client import Sampling
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
        concurrency=args.concurrency,
        skip_empty=args.skip_empty,
        progress=not args.no_progress,
        tls=_tls(args),
        sampling=Sampling(args.frame_interval, args.scenes, args.window, args.overlap, args.media_output),
        cache=args.cache,
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
        from embedstream.client.errors import Explainer

        # The client's EmbedstreamError already says it in one line; a raw stub error gets the same.
        print(f"embedstream {command}: {Explainer('', None)(exc)}", file=sys.stderr)
        return 1


def _call(settings: Settings, args: argparse.Namespace) -> int:
    import grpc

    from embedstream.call import Call, run

    def work() -> int:
        try:
            return run(Call(args.target, args.method, args.data, tuple(args.headers), _tls(args), args.max_time))
        except grpc.RpcError as exc:  # grpcurl's own error layout, for scripts that read it
            print(f"ERROR:\n  Code: {exc.code().name}\n  Message: {exc.details()}", file=sys.stderr)
            return 1

    return _exit_code("call", work)


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
        from embedstream.client.errors import Explainer

        print(f"embedstream check: {Explainer(target, tls)(exc)}", file=sys.stderr)
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


def _pull(settings: Settings, args: argparse.Namespace) -> int:
    from embedstream import hub

    try:
        where = hub.pull(args.repo, Path(args.to) if args.to else None, args.revision)
    except KeyboardInterrupt:
        # The weights' partial download stays on disk (see embedstream/hub.py); the next pull goes on from it.
        print(f"\nembedstream: pull of {args.repo} interrupted; run it again to resume", file=sys.stderr)
        return 130
    print(f"pulled {args.repo} into {where}; serve it with this registry entry:", file=sys.stderr)
    print(hub.registry_lines(args.repo, where), end="")
    print("(workers read it with HF_HUB_OFFLINE=1, the default: nothing more is downloaded)", file=sys.stderr)
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
    "pull": _pull,
    "inspect": _inspect,
}
