"""The worker's spans: one per traced queue entry, a child of the gateway span that queued it.

A span covers the entry from its enqueueing (the gateway's clock) until its answer
is written: queue wait, then its batch (an event marks when that batch started),
then the reply. An entry that shared a batch with others carries the batch's size
instead of a link to a batch span, so a trace holds only its own request's spans.
Attributes are counts and timings, never input text.
"""

from __future__ import annotations

from embedstream import clock, tracing, wire
from embedstream.workers.batcher import Entry


def record(job: wire.Job, model: str, worker: str, entry: Entry | None = None, error: str = "") -> None:
    """Record the span of ``job`` (its ``entry`` when it reached the model), now that it is answered."""
    if not job.trace or not tracing.enabled():
        return
    attributes: dict[str, tracing.Value] = {
        "embedstream.model": model,
        "embedstream.worker": worker,
        "embedstream.inputs": len(job.inputs),
        "embedstream.stream": "bulk" if job.job_id else "interactive",
    }
    if job.job_id:
        attributes.update({"embedstream.job_id": job.job_id, "embedstream.chunk": job.chunk})
    events: list[tuple[str, float]] = []
    if entry is not None:
        attributes.update(
            {
                "embedstream.tokens": sum(t.length for t in entry.tokens),
                "embedstream.truncated": sum(t.truncated for t in entry.tokens),
                "embedstream.inference_ms": round(entry.inference_ms, 3),
                "embedstream.batch_inputs": entry.batch_inputs,
                "embedstream.deliveries": entry.deliveries,
                "messaging.message.id": entry.stream_id.decode(),
            }
        )
        if entry.cached:
            attributes["embedstream.cached_inputs"] = entry.cached
        if entry.started_ms:
            attributes["embedstream.queue_ms"] = round(max(0.0, entry.started_ms - job.enqueued_ms), 3)
            events.append(("batch started", entry.started_ms))
        if entry.error and not error:
            error = f"{entry.error[0]}: {entry.error[1]}"
    tracing.record(f"process {model}", job.trace, job.enqueued_ms, clock.now_ms(), attributes, events, error)
