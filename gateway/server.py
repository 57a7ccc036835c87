"""The gateway process: gRPC server, health, reflection, and their lifecycle."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedstream import logs, metrics, tracing
from embedstream.connections import connect
from embedstream.errors import Unavailable
from embedstream.gateway.auth import Keyring
from embedstream.gateway.decoding import DecodeGuard
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Dispatcher
from embedstream.gateway.embedder import Embedder
from embedstream.gateway.guard import Guard
from embedstream.gateway.http import HttpApi
from embedstream.gateway.jobs import Jobs
from embedstream.gateway.ratelimit import RateLimiter
from embedstream.gateway.replies import ReplyRouter
from embedstream.gateway.spans import Spans
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.tls import server_credentials
from embedstream.v1 import embedder_pb2, embedder_pb2_grpc, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
JOBS_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Gateway:
    """Owns the server and the Redis-side tasks; ``async with`` starts and stops it."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        # Bad keys or certificates stop the process before anything connects.
        self.keyring = Keyring(settings)
        self.credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.redis = connect(settings.redis_url, settings.redis_timeout_s)
        self.router = ReplyRouter(settings.redis_url, settings.redis_timeout_s)
        self.directory = Directory(self.redis, registry, settings.worker_liveness_s)
        self.dispatcher = Dispatcher(self.redis, self.router, self.directory, settings.redis_timeout_s)
        self.health = health.aio.HealthServicer()
        # The guard comes first: a call without a valid key is refused before its
        # request is even decoded. Only the span around it (when tracing) is outside.
        self.guard = Guard(self.keyring, RateLimiter(self.redis, settings.redis_timeout_s))
        interceptors = [self.guard, DecodeGuard()]
        if tracing.enabled():
            interceptors.insert(0, Spans())
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                # Accept the Python client's keepalive pings (every 10 s, with or without calls).
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        self.embedder = Embedder(settings, registry, self.directory, self.dispatcher)
        self.http = (
            None
            if settings.http_port < 0
            else HttpApi(settings, registry, self.directory, self.dispatcher, self.embedder, self.guard)
        )
        self.port = 0
        self._was_serving: dict[str, bool] = {}

    async def start(self) -> None:
        """Bind, start the reply reader and the directory, then serve."""
        embedder_pb2_grpc.add_EmbedderServicer_to_server(self.embedder, self.server)
        jobs_pb2_grpc.add_JobsServicer_to_server(
            Jobs(self.settings, self.registry, self.directory, self.redis), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, JOBS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{self.settings.host}:{self.settings.port}"
        if self.credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, self.credentials)
        if self.port == 0:
            raise OSError(f"cannot bind {address}")
        self._warn_if_exposed()
        metrics.init_tenants(self.keyring.tenants())
        _on_sighup(self.keyring.reload)
        self.directory.on_change(self._publish_health)
        await self.router.start()
        await self.directory.start()
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        transport = "plaintext" if self.credentials is None else "mTLS" if self.settings.tls_client_ca else "TLS"
        auth = f"API keys ({len(self.keyring)})" if self.keyring.enabled else "no authentication"
        log.info(
            "gateway %s listening on %s:%d (%s, %s)",
            self.router.gateway_id,
            self.settings.host,
            self.port,
            transport,
            auth,
        )
        if self.http is not None:
            log.info("gateway %s serving HTTP on %s:%d", self.router.gateway_id, self.settings.host, self.http.port)

    def _warn_if_exposed(self) -> None:
        if _loopback(self.settings.host):
            return
        if not self.keyring.enabled:
            log.warning(
                "serving %s without authentication: any host that reaches it may call it; "
                "set EMBEDSTREAM_API_KEYS_FILE (see README, Security)",
                self.settings.host,
            )
        elif self.credentials is None:
            log.warning(
                "serving %s without TLS: API keys and inputs cross the network in clear text; "
                "set EMBEDSTREAM_TLS_CERT and EMBEDSTREAM_TLS_KEY",
                self.settings.host,
            )

    async def stop(self, delay: float | None = None, grace: float | None = None) -> None:
        """Report NOT_SERVING, keep serving ``delay`` seconds (load balancers and
        clients move away), then refuse new calls and let those in flight finish
        for ``grace`` seconds before closing. Defaults come from the settings."""
        delay = self.settings.shutdown_delay_s if delay is None else delay
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        log.info("gateway %s draining: NOT_SERVING for %.1f s, then %.1f s grace", self.router.gateway_id, delay, grace)
        if self.http is not None:
            self.http.draining = True
        await asyncio.sleep(delay)
        await asyncio.gather(self.server.stop(grace), *([self.http.stop()] if self.http is not None else []))
        await self.directory.stop()
        await self.router.stop()
        try:
            await asyncio.wait_for(self.redis.aclose(), 2.0)
        except TimeoutError:
            pass
        log.info("gateway %s stopped", self.router.gateway_id)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _publish_health(self) -> None:
        overall = SERVING if self.directory.redis_ok else NOT_SERVING
        await self.health.set("", overall)
        await self.health.set(SERVICE, overall)
        await self.health.set(JOBS_SERVICE, overall)
        for name in self.registry.models:
            serving = self.directory.serving(name)
            await self.health.set(name, SERVING if serving else NOT_SERVING)
            lost_redis = not self.directory.redis_ok
            if (
                self._was_serving.get(name)
                and not serving
                and (lost_redis or not self.registry.models[name].scale_to_zero)
            ):
                # Its last worker is gone (or Redis is): callers waiting on it
                # would otherwise hang until their deadline. A scale-to-zero model's
                # callers keep waiting: their entries are queued, and wake a worker.
                why = "the queue (Redis) became unreachable" if not self.directory.redis_ok else "its last worker left"
                self.dispatcher.fail_model(name, Unavailable(f"model {name!r} stopped serving: {why}; retry"))
            self._was_serving[name] = serving


def _loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _on_sighup(reload: Callable[[], None]) -> None:
    """SIGHUP rereads the API key file (where this thread may own signals)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        log.debug("SIGHUP handler not installed (not the main thread)")


async def serve(settings: Settings, registry: Registry, ready: asyncio.Event | None = None) -> None:
    """Run a gateway until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics.init_gateway(list(registry.models))
    metrics.start_server(settings.metrics_port)
    gateway = Gateway(settings, registry)
    await gateway.start()
    logs.announce(f"embedstream gateway listening on {settings.host}:{gateway.port}")
    if gateway.http is not None:
        logs.announce(f"embedstream gateway serving HTTP on {settings.host}:{gateway.http.port}")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        tracing.shutdown()
