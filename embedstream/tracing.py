"""OpenTelemetry traces, off unless a collector is configured.

This is the only module that touches ``opentelemetry``, and it imports it in
:func:`setup` alone: with ``EMBEDSTREAM_OTEL_ENDPOINT`` empty the packages are
never imported and every function here returns at its first line. Context
travels between processes as a W3C ``traceparent`` string: from the caller's
gRPC metadata into the gateway's span, from that span into the queue entry
(``wire.Job.trace``), and from the entry into the worker's span.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedstream import __version__
from embedstream.errors import ConfigError
from embedstream.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

#: Attribute values a span takes (OpenTelemetry's AttributeValue, minus sequences).
Value = str | bool | int | float


@dataclass(slots=True)
class _Otel:
    """What a process with tracing on holds: its provider, tracer and propagator."""

    provider: TracerProvider
    tracer: Tracer
    propagator: TraceContextTextMapPropagator
    api: Any  # the opentelemetry.trace module


_otel: _Otel | None = None


def enabled() -> bool:
    """Whether this process records spans."""
    return _otel is not None


def setup(settings: Settings, role: str) -> None:
    """Export this process's spans to ``settings.otel_endpoint``; nothing when it is empty."""
    global _otel
    if not settings.otel_endpoint or _otel is not None:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise ConfigError(
            f"EMBEDSTREAM_OTEL_ENDPOINT is set but {exc.name} is not installed: pip install 'embedstream[otel]'"
        ) from None

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name;
    # EMBEDSTREAM_OTEL_SERVICE_NAME wins over everything.
    resource = Resource.create({"service.name": f"embedstream-{role}", "service.version": __version__})
    if settings.otel_service_name:
        resource = resource.merge(Resource({"service.name": settings.otel_service_name}))
    # The SDK reads the rest of the standard variables itself: OTEL_TRACES_SAMPLER,
    # OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _CERTIFICATE.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    trace.set_tracer_provider(provider)
    _otel = _Otel(provider, provider.get_tracer("embedstream", __version__), TraceContextTextMapPropagator(), trace)
    log.info("tracing on: spans of %s go to %s", resource.attributes.get("service.name"), settings.otel_endpoint)


def shutdown(timeout_s: float = 5.0) -> None:
    """Export the spans still buffered, waiting at most ``timeout_s`` (a collector that is
    down must not hold up a SIGTERM drain), then stop exporting."""
    global _otel
    if _otel is None:
        return
    done = threading.Thread(target=_otel.provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        log.warning("tracing: spans not exported within %.1f s of shutdown were dropped", timeout_s)
    _otel = None


@contextmanager
def server_span(
    name: str, metadata: Sequence[tuple[str, Any]] | None, attributes: Mapping[str, Value]
) -> Iterator[None]:
    """A SERVER span, current inside the block, continuing the caller's ``traceparent`` (if its
    gRPC metadata has one). The block records the outcome with :func:`annotate` and :func:`fail`."""
    if _otel is None:
        yield
        return
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    parent = _otel.propagator.extract(carrier)
    kind = _otel.api.SpanKind.SERVER
    with _otel.tracer.start_as_current_span(
        name, parent, kind, attributes, record_exception=False, set_status_on_exception=False
    ):
        yield


@contextmanager
def child_span(name: str) -> Iterator[None]:
    """An INTERNAL child of the current span, current inside the block."""
    if _otel is None:
        yield
        return
    with _otel.tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False):
        yield


def annotate(attributes: Mapping[str, Value]) -> None:
    """Set ``attributes`` on the current span."""
    if _otel is None:
        return
    span: Span = _otel.api.get_current_span()
    span.set_attributes(attributes)


def fail(description: str) -> None:
    """Mark the current span as failed."""
    if _otel is None:
        return
    span: Span = _otel.api.get_current_span()
    span.set_status(_otel.api.Status(_otel.api.StatusCode.ERROR, description))


def traceparent() -> str:
    """The current span's W3C ``traceparent``, for a queue entry; "" when there is none."""
    if _otel is None:
        return ""
    carrier: dict[str, str] = {}
    _otel.propagator.inject(carrier)
    return carrier.get("traceparent", "")


def ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex, for log lines; None when there is none."""
    if _otel is None:
        return None
    context = _otel.api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def record(
    name: str,
    parent: str,
    start_ms: float,
    end_ms: float,
    attributes: Mapping[str, Value],
    events: Sequence[tuple[str, float]] = (),
    error: str = "",
) -> None:
    """A finished CONSUMER span, child of the ``traceparent`` ``parent``, from ``start_ms`` to
    ``end_ms`` (unix milliseconds), with ``events`` (name, unix ms); nothing without a parent."""
    if _otel is None or not parent:
        return
    context = _otel.propagator.extract({"traceparent": parent})
    span = _otel.tracer.start_span(
        name, context, _otel.api.SpanKind.CONSUMER, attributes, start_time=int(start_ms * 1e6)
    )
    for event, at in events:
        span.add_event(event, timestamp=int(at * 1e6))
    if error:
        span.set_status(_otel.api.Status(_otel.api.StatusCode.ERROR, error))
    span.end(end_time=int(end_ms * 1e6))
