"""Prometheus metrics of gateways and workers; served on ``metrics_port`` when set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("embedstream_requests_total", "Requests answered by the gateway", ["rpc", "model", "code"])
INPUTS = Counter("embedstream_inputs_total", "Inputs accepted by the gateway", ["model"])
INFLIGHT = Gauge("embedstream_inflight_requests", "Requests waiting for a worker's reply", ["model"])
LATENCY = Histogram(
    "embedstream_request_seconds",
    "Gateway time per request",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LATE_REPLIES = Counter("embedstream_late_replies_total", "Replies for requests already answered, dropped")
ADMISSION_REJECTED = Counter(
    "embedstream_admission_rejected_total", "Unary calls refused because the model queue was full", ["model"]
)
AUTH_REFUSED = Counter("embedstream_auth_refused_total", "Calls refused for a missing, malformed or unknown API key")
RATE_LIMITED = Counter(
    "embedstream_rate_limited_total", "Calls refused (or stream messages delayed past their deadline)", ["tenant"]
)
QUEUE_DEPTH = Gauge("embedstream_queue_depth", "Entries in a model's stream", ["model"])
QUEUE_LAG = Gauge("embedstream_queue_lag_seconds", "Age of the oldest unfinished entry in a model's stream", ["model"])
LIVE_WORKERS = Gauge("embedstream_live_workers", "Workers with a recent heartbeat", ["model"])

WORKER_ALIVE = Gauge(
    "embedstream_worker_alive_timestamp_seconds", "When the worker's event loop last ticked (liveness)", ["model"]
)
WORKER_HEARTBEAT = Gauge(
    "embedstream_worker_heartbeat_timestamp_seconds", "When the worker last wrote its heartbeat to Redis", ["model"]
)
WORKER_QUEUED = Gauge("embedstream_worker_pool_inputs", "Inputs read and waiting for a batch", ["model"])
WORKER_REPLIES = Counter("embedstream_worker_replies_total", "Entries answered by this worker", ["model"])
WORKER_DROPPED = Counter("embedstream_worker_dropped_total", "Entries dropped before inference", ["model", "reason"])
BATCH_SIZE = Histogram(
    "embedstream_batch_inputs", "Inputs per batch", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
BATCH_TOKENS = Histogram(
    "embedstream_batch_tokens", "Real tokens per batch", ["model"], buckets=(64, 256, 1024, 4096, 16384, 65536)
)
INFERENCE_SECONDS = Histogram("embedstream_inference_seconds", "Forward pass time per batch", ["model"])
REDELIVERED = Counter("embedstream_redelivered_total", "Entries reclaimed from a dead or stalled worker", ["model"])
DEAD_LETTERED = Counter("embedstream_dead_lettered_total", "Entries moved to the dead-letter stream", ["model"])
DEAD_LETTERS_TRIMMED = Counter(
    "embedstream_dead_letters_trimmed_total", "Old dead letters trimmed by max_dead_letters", ["model"]
)
NON_FINITE = Counter("embedstream_non_finite_total", "Requests failed because the model returned NaN or Inf", ["model"])
WORKER_UNSTORED = Counter(
    "embedstream_worker_unstored_total",
    "Answers (reply, job result, dead letter) Redis refused on every try; their entries were handed back unacked",
    ["model", "kind"],
)
LOOP_ERRORS = Counter(
    "embedstream_loop_errors_total", "Iterations of a background loop that failed; the loop carries on", ["loop"]
)


#: Why a worker drops an entry before the model sees it.
DROP_REASONS = ("expired", "cancelled", "lease_lost")
#: What a worker may fail to store.
UNSTORED_KINDS = ("answer", "dead_letter")


def init_gateway(models: list[str]) -> None:
    """Create every per-model gateway series at zero, so dashboards and alerts see them before the first event."""
    for model in models:
        for metric in (INPUTS, INFLIGHT, LATENCY, ADMISSION_REJECTED, QUEUE_DEPTH, QUEUE_LAG, LIVE_WORKERS):
            metric.labels(model)


def init_tenants(tenants: list[str]) -> None:
    """Create each tenant's rate-limit series at zero."""
    for tenant in tenants:
        RATE_LIMITED.labels(tenant)


def init_worker(model: str) -> None:
    """Create every series of a worker's model at zero."""
    for metric in (
        WORKER_ALIVE,
        WORKER_HEARTBEAT,
        WORKER_QUEUED,
        WORKER_REPLIES,
        BATCH_SIZE,
        BATCH_TOKENS,
        INFERENCE_SECONDS,
        REDELIVERED,
        DEAD_LETTERED,
        DEAD_LETTERS_TRIMMED,
        NON_FINITE,
    ):
        metric.labels(model)
    for reason in DROP_REASONS:
        WORKER_DROPPED.labels(model, reason)
    for kind in UNSTORED_KINDS:
        WORKER_UNSTORED.labels(model, kind)


def start_server(port: int) -> None:
    """Serve /metrics on ``port``; 0 leaves metrics off."""
    if port:
        start_http_server(port)
