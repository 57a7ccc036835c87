"""Process settings: one frozen object, built in ``main()`` from ``EMBEDSTREAM_*``.

Nothing reads the environment at import time. Every field carries its help
text, shown by ``embedstream --help``; a bad value raises :class:`ConfigError`
naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from embedstream.connections import SCHEMES
from embedstream.errors import ConfigError

ENV_PREFIX = "EMBEDSTREAM_"
LOG_FORMATS = ("text", "json")
#: OpenTelemetry's own variables for the collector, read when EMBEDSTREAM_OTEL_ENDPOINT is absent.
OTEL_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a gateway, worker or ``serve`` process can be told."""

    redis_url: str = _f("", "Redis URL (redis[s]://, redis+cluster://, redis+sentinel://); empty: serve starts one")
    registry: str = _f("", "Path of the model registry TOML; empty serves the built-in default model")
    host: str = _f("127.0.0.1", "Address the gateway binds; 0.0.0.0 or [::] to serve other hosts")
    port: int = _f(50051, "gRPC port of the gateway; 0 picks a free one")
    http_port: int = _f(8080, "HTTP port of the gateway (OpenAI-style /v1/embeddings); 0 picks a free one, -1 is off")
    max_inputs_per_request: int = _f(256, "Inputs accepted in one EmbedRequest")
    max_text_bytes: int = _f(65536, "UTF-8 bytes accepted in one text input")
    max_chunks_per_input: int = _f(256, "Chunks one text may split into with long_inputs=chunk")
    max_chunks_per_request: int = _f(2048, "Chunks one request (or job chunk of 64 inputs) may split into")
    max_image_bytes: int = _f(8 * 1024 * 1024, "Encoded bytes accepted in one image input")
    max_image_pixels: int = _f(25_000_000, "Pixels (width x height) accepted in one image input")
    max_video_bytes: int = _f(48 * 1024 * 1024, "Encoded bytes accepted in one video input (MP4, WebM, MKV)")
    max_video_seconds: float = _f(7200.0, "Duration accepted in one video input")
    max_video_pixels: int = _f(3840 * 2160, "Pixels per frame (width x height) accepted in one video input")
    max_audio_bytes: int = _f(48 * 1024 * 1024, "Encoded bytes accepted in one audio input (WAV, FLAC, MP3, OGG)")
    max_audio_seconds: float = _f(7200.0, "Duration accepted in one audio input")
    max_media_frames: int = _f(1024, "Frames (video) or windows (audio) one input may be embedded as: a memory bound")
    max_concurrent_rpcs: int = _f(
        1000, "Calls one gateway serves at once; more get RESOURCE_EXHAUSTED (a memory bound)"
    )
    stream_window: int = _f(2048, "Inputs in flight per EmbedStream before reading the client pauses")
    max_deadline_s: float = _f(60.0, "Deadline given to calls without one, and the longest honoured")
    redis_min_replicas: int = _f(0, "Replicas that must hold an accepted job before it is acknowledged")
    redis_timeout_s: float = _f(1.5, "Redis command timeout; a call fails UNAVAILABLE after it")
    worker_liveness_s: float = _f(5.0, "A worker whose heartbeat is older than this counts as gone")
    job_ttl_s: int = _f(86400, "How long a job and its results are kept when the job names no TTL")
    max_job_ttl_s: int = _f(7 * 86400, "The longest TTL a job may ask for")
    max_job_inline_inputs: int = _f(10000, "Inputs accepted inline by one SubmitJob (UploadJob has no such cap)")
    max_job_inputs: int = _f(10_000_000, "Inputs accepted by one job")
    max_bulk_entries: int = _f(200_000, "Job chunks (64 inputs each) queued per model before new jobs are refused")
    threads: int = _f(
        0,
        "Model threads per worker (torch or ONNX Runtime); 0: all cores (torch: one fewer for a pass while "
        "other processes use CPU)",
    )
    onnx_cache: str = _f("", "Folder of the onnx engine's exported graphs; empty: ~/.cache/embedstream/onnx")
    visibility_timeout_s: float = _f(30.0, "Idle time after which a dead worker's entries are reclaimed")
    consumer_gc_s: float = _f(3600.0, "A consumer idle this long with nothing pending is removed from its group")
    max_deliveries: int = _f(3, "Deliveries of an entry before it is dead-lettered")
    heartbeat_s: float = _f(1.0, "Worker heartbeat and lease renewal interval")
    batch_timeout_s: float = _f(300.0, "A forward pass this long means a hung model: the worker exits")
    max_dead_letters: int = _f(10000, "Entries kept per dead-letter stream; older ones are trimmed, counted")
    shutdown_delay_s: float = _f(1.0, "SIGTERM: a gateway reports NOT_SERVING this long before closing")
    shutdown_grace_s: float = _f(25.0, "SIGTERM: how long a gateway lets calls in flight finish")
    prefetch_inputs: int = _f(1024, "Inputs a worker reads ahead; a larger pool sorts by length better")
    cache_bytes: int = _f(
        256 * 1024 * 1024, "Embedding cache budget per model in Redis, bytes (least recently used go first); 0: off"
    )
    cache_ttl_s: int = _f(7 * 86400, "Seconds an embedding cache entry lives after its last use; 0: cache off")
    max_wait_ms: float = _f(2.0, "How long after its last batch a worker waits for inputs to fill the next one")
    metrics_port: int = _f(0, "Port of the Prometheus /metrics endpoint; 0 turns it off")
    log_level: str = _f("INFO", "Python logging level")
    log_format: str = _f("text", "Log lines as text, or json: one object per line (ts, level, logger, message, ...)")
    otel_endpoint: str = _f(
        "",
        "OTLP/gRPC trace collector, http://host:4317 (https://: TLS); unset: OTEL_EXPORTER_OTLP_ENDPOINT; empty: off",
    )
    otel_service_name: str = _f("", "service.name of this process's spans; empty: embedstream-<gateway|worker>")
    api_keys_file: str = _f("", "API key file (tenant, sha256 of the key, limits per line); reread when it changes")
    api_keys: str = _f("", "API key entries as in the key file, ';'-separated; with neither, auth is off")
    rate_limit: float = _f(0.0, "Inputs per second per tenant, shared by all gateways; 0 = unlimited")
    rate_burst: int = _f(0, "Inputs a tenant may send at once; 0 = the larger of rate and max_inputs_per_request")
    tls_cert: str = _f("", "PEM certificate chain of the gateway; with tls_key, the gateway speaks only TLS")
    tls_key: str = _f("", "PEM private key of tls_cert")
    tls_client_ca: str = _f("", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``EMBEDSTREAM_<FIELD>`` variables, then apply non-None ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env:
                values[f.name] = _cast(key, env[key], type(f.default))
        if "otel_endpoint" not in values:
            # The standard variables turn tracing on too; EMBEDSTREAM_OTEL_ENDPOINT, when
            # present (even empty, which turns tracing off), wins over both.
            for key in OTEL_ENDPOINT_VARIABLES:
                if env.get(key):
                    values["otel_endpoint"] = env[key]
                    break
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values no process could run with, naming the variable."""
        positive = (
            "max_inputs_per_request",
            "max_text_bytes",
            "max_chunks_per_input",
            "max_chunks_per_request",
            "max_image_bytes",
            "max_image_pixels",
            "max_video_bytes",
            "max_video_seconds",
            "max_video_pixels",
            "max_audio_bytes",
            "max_audio_seconds",
            "max_media_frames",
            "stream_window",
            "max_concurrent_rpcs",
            "max_deadline_s",
            "redis_timeout_s",
            "worker_liveness_s",
            "visibility_timeout_s",
            "max_deliveries",
            "consumer_gc_s",
            "heartbeat_s",
            "prefetch_inputs",
            "job_ttl_s",
            "max_job_ttl_s",
            "max_job_inline_inputs",
            "max_job_inputs",
            "max_bulk_entries",
            "batch_timeout_s",
            "max_dead_letters",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be > 0")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be 0..65535")
        if not -1 <= self.http_port < 65536:
            raise ConfigError(f"{ENV_PREFIX}HTTP_PORT must be 0..65535, or -1 (off)")
        non_negative = ("threads", "cache_bytes", "cache_ttl_s", "max_wait_ms", "shutdown_delay_s", "shutdown_grace_s")
        for name in (*non_negative, "rate_limit", "rate_burst"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be >= 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{ENV_PREFIX}TLS_CERT and {ENV_PREFIX}TLS_KEY must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError(f"{ENV_PREFIX}TLS_CLIENT_CA (mTLS) needs {ENV_PREFIX}TLS_CERT and {ENV_PREFIX}TLS_KEY")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"{ENV_PREFIX}LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        if self.otel_endpoint and urlsplit(self.otel_endpoint).scheme not in ("http", "https"):
            named = " / ".join((f"{ENV_PREFIX}OTEL_ENDPOINT", *OTEL_ENDPOINT_VARIABLES))
            raise ConfigError(f"{named}: the trace collector must be an http:// or https:// URL")
        if self.redis_url and urlsplit(self.redis_url).scheme not in SCHEMES:
            raise ConfigError(f"{ENV_PREFIX}REDIS_URL must start with one of {', '.join(s + '://' for s in SCHEMES)}")

    @property
    def auth(self) -> bool:
        """Whether API keys are required (some are configured)."""
        return bool(self.api_keys_file or self.api_keys.strip())

    def require_redis(self) -> str:
        """The Redis URL a gateway or worker needs; only ``serve`` runs without one (it starts its own)."""
        if not self.redis_url:
            raise ConfigError("EMBEDSTREAM_REDIS_URL (or --redis-url) is required; `embedstream serve` starts its own")
        return self.redis_url

    def torch_threads(self) -> int:
        """Intra-op threads for the model: the setting, or every core this process may use
        (the worker's adaptive policy, workers/threads.py, drops to one fewer while others are busy)."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["redis_url"] = redact_url(self.redis_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs (several hosts allowed)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def env_help() -> str:
    """One line per setting, for ``--help``."""
    lines = []
    for f in dataclasses.fields(Settings):
        lines.append(f"  {ENV_PREFIX}{f.name.upper():<24} {f.metadata['help']} (default {f.default!r})")
    return "\n".join(lines)


def _cast(key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
