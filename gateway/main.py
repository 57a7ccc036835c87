"""A gateway process from settings: the ``gateway`` command."""

from __future__ import annotations

from embedstream import registryfile, tracing
from embedstream.gateway.server import serve
from embedstream.runner import run_async
from embedstream.settings import Settings


def run(settings: Settings) -> int:
    """Serve gRPC until SIGTERM/SIGINT."""
    settings.require_redis()
    registry = registryfile.load(settings.registry)
    tracing.setup(settings, "gateway")
    run_async(serve(settings, registry))
    return 0
