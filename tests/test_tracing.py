"""OpenTelemetry traces through real processes: client traceparent → gateway span → queue
entry → worker span, exported over OTLP/gRPC to a real receiver in this process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import msgpack
import pytest
import redis

from embedstream import apikeys, keys, wire
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.support.otlp import CONSUMER, ERROR, INTERNAL, SERVER, Collector, Span, traceparent
from tests.support.processes import start_gateway, start_worker
from tests.support.traced import IDLE, KEY, MODEL, SECRET, TENANT, plain_env, raw_bulk_entries, write_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory)


AUTH = [("authorization", f"Bearer {KEY}")]


def traced_call(header: str) -> list[tuple[str, str]]:
    return [("traceparent", header), *AUTH]


@dataclass
class Trail:
    """What one traced session did, and every span it exported."""

    spans: list[Span]
    raw_export: bytes
    exports_before_stop: int
    embed: tuple[str, str, pb.EmbedResponse]
    stream: tuple[str, str]
    job: tuple[str, str, str]
    upload: tuple[str, str, str]
    idle_job: tuple[str, dict[str, object]]
    invalid: str
    unavailable: str
    refused: str

    def of_trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def trail(redis_server: RedisServer, r: redis.Redis, registry: Path, log_dir: Path) -> Iterator[Trail]:
    collector = Collector().start()
    # Spans leave only when the buffer fills or the process stops: what arrives
    # proves the SIGTERM path flushes.
    env = plain_env(
        redis_server.url,
        registry,
        EMBEDSTREAM_OTEL_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="600000",
        EMBEDSTREAM_API_KEYS=f"{TENANT} {apikeys.digest(KEY)}",
    )
    gateway, port = start_gateway(env, log_dir)
    worker = start_worker(env, log_dir, MODEL, r)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            embedder, jobs = pb_grpc.EmbedderStub(channel), jpb_grpc.JobsStub(channel)
            inputs = [pb.Input(text=f"{SECRET} {i}") for i in range(2)]

            header, embed_trace, embed_parent = traceparent()
            response = embedder.Embed(pb.EmbedRequest(inputs=inputs), metadata=traced_call(header), timeout=10)

            header, stream_trace, stream_parent = traceparent()
            requests = [pb.EmbedRequest(request_id=str(k), inputs=inputs[: k + 1]) for k in range(2)]
            assert len(list(embedder.EmbedStream(iter(requests), metadata=traced_call(header), timeout=10))) == 2

            header, job_trace, job_parent = traceparent()
            job = jobs.SubmitJob(
                jpb.SubmitJobRequest(spec=jpb.JobSpec(model=MODEL), inputs=inputs + inputs[:1]),
                metadata=traced_call(header),
                timeout=10,
            )
            header, upload_trace, upload_parent = traceparent()
            parts = [
                jpb.UploadJobRequest(header=jpb.JobSpec(model=MODEL)),
                *(jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=[i])) for i in inputs),
            ]
            upload = jobs.UploadJob(iter(parts), metadata=traced_call(header), timeout=10)
            for submitted in (job, upload):
                states = [j.state for j in jobs.WatchJob(jpb.GetJobRequest(id=submitted.id), metadata=AUTH, timeout=30)]
                assert states[-1] == jpb.JOB_STATE_SUCCEEDED

            header, idle_trace, _ = traceparent()
            idle = jobs.SubmitJob(
                jpb.SubmitJobRequest(spec=jpb.JobSpec(model=IDLE), inputs=inputs),
                metadata=traced_call(header),
                timeout=10,
            )
            [idle_entry] = raw_bulk_entries(r, idle.id)
            jobs.CancelJob(jpb.GetJobRequest(id=idle.id), metadata=AUTH, timeout=10)

            header, invalid_trace, _ = traceparent()
            with pytest.raises(grpc.RpcError) as refused:
                embedder.Embed(pb.EmbedRequest(inputs=[pb.Input(text="  ")]), metadata=traced_call(header), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            header, unavailable_trace, _ = traceparent()
            with pytest.raises(grpc.RpcError) as unserved:
                embedder.Embed(pb.EmbedRequest(model=IDLE, inputs=inputs), metadata=traced_call(header), timeout=10)
            assert unserved.value.code() == grpc.StatusCode.UNAVAILABLE

            header, refused_trace, _ = traceparent()
            with pytest.raises(grpc.RpcError) as unknown:
                embedder.Embed(pb.EmbedRequest(inputs=inputs), metadata=[("traceparent", header)], timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED

            embedder.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=10)  # no traceparent: a new trace
        exports_before_stop = len(collector.requests)
        assert gateway.stop() == 0 and worker.stop() == 0
        yield Trail(
            spans=collector.spans(),
            raw_export=collector.raw(),
            exports_before_stop=exports_before_stop,
            embed=(embed_trace, embed_parent, response),
            stream=(stream_trace, stream_parent),
            job=(job_trace, job_parent, job.id),
            upload=(upload_trace, upload_parent, upload.id),
            idle_job=(idle_trace, idle_entry),
            invalid=invalid_trace,
            unavailable=unavailable_trace,
            refused=refused_trace,
        )
    finally:
        gateway.kill()
        worker.kill()
        r.delete(keys.bulk(IDLE))
        collector.stop()


def one(spans: list[Span], **match: object) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {found}"
    return found[0]


def test_spans_leave_on_sigterm(trail: Trail) -> None:
    assert trail.exports_before_stop == 0
    assert {s.service for s in trail.spans} == {"embedstream-gateway", "embedstream-worker"}


def test_embed_continues_the_clients_trace_into_the_worker(trail: Trail) -> None:
    trace_id, client_span, response = trail.embed
    spans = trail.of_trace(trace_id)
    server = one(spans, kind=SERVER)
    assert server.name == "embedstream.v1.Embedder/Embed" and server.parent_id == client_span
    assert server.service == "embedstream-gateway"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["rpc.method"] == "Embed" and server.attributes["rpc.service"] == "embedstream.v1.Embedder"
    assert server.attributes["embedstream.model"] == MODEL and server.attributes["embedstream.inputs"] == 2
    assert server.attributes["embedstream.tenant"] == TENANT
    worker = one(spans, kind=CONSUMER)
    assert worker.parent_id == server.span_id and worker.service == "embedstream-worker"
    assert worker.name == f"process {MODEL}"
    attrs = worker.attributes
    assert attrs["embedstream.model"] == MODEL and attrs["embedstream.inputs"] == 2
    assert attrs["embedstream.worker"] == response.metadata.worker
    assert attrs["embedstream.tokens"] == response.metadata.tokens > 0
    assert attrs["embedstream.batch_inputs"] >= 2 and attrs["embedstream.stream"] == "interactive"
    assert attrs["embedstream.queue_ms"] >= 0 and attrs["embedstream.inference_ms"] >= 0
    assert worker.events == ["batch started"]
    # The worker span starts when the gateway queued the entry (whole milliseconds), inside its span.
    assert server.start_ns - 1_000_000 < worker.start_ns < server.end_ns and worker.start_ns < worker.end_ns


def test_each_stream_message_has_a_span_and_its_worker_span_below_it(trail: Trail) -> None:
    trace_id, client_span = trail.stream
    spans = trail.of_trace(trace_id)
    server = one(spans, kind=SERVER)
    assert server.name == "embedstream.v1.Embedder/EmbedStream" and server.parent_id == client_span
    assert server.attributes["rpc.grpc.status_code"] == 0
    messages = [s for s in spans if s.kind == INTERNAL]
    assert len(messages) == 2
    assert {s.name for s in messages} == {"embedstream.v1.Embedder/EmbedStream message"}
    assert {s.parent_id for s in messages} == {server.span_id}
    assert sorted(s.attributes["embedstream.inputs"] for s in messages) == [1, 2]
    workers = [s for s in spans if s.kind == CONSUMER]
    assert sorted(w.parent_id for w in workers) == sorted(m.span_id for m in messages)
    by_parent = {w.parent_id: w for w in workers}
    for m in messages:
        assert by_parent[m.span_id].attributes["embedstream.inputs"] == m.attributes["embedstream.inputs"]


@pytest.mark.parametrize(("call", "inputs"), [("SubmitJob", 3), ("UploadJob", 2)])
def test_job_chunks_carry_the_submitting_calls_context(trail: Trail, call: str, inputs: int) -> None:
    trace_id, client_span, job_id = trail.job if call == "SubmitJob" else trail.upload
    spans = trail.of_trace(trace_id)
    server = one(spans, kind=SERVER, name=f"embedstream.v1.Jobs/{call}")
    assert server.parent_id == client_span and server.attributes["embedstream.job_id"] == job_id
    assert server.attributes["embedstream.inputs"] == inputs and server.attributes["embedstream.model"] == MODEL
    chunk = one(spans, kind=CONSUMER)
    assert chunk.parent_id == server.span_id
    assert chunk.attributes["embedstream.job_id"] == job_id and chunk.attributes["embedstream.chunk"] == 0
    assert chunk.attributes["embedstream.stream"] == "bulk" and chunk.attributes["embedstream.inputs"] == inputs


def test_a_queue_entry_holds_the_gateway_spans_traceparent(trail: Trail) -> None:
    trace_id, entry = trail.idle_job
    server = one(trail.of_trace(trace_id), kind=SERVER)
    assert entry["tr"] == f"00-{trace_id}-{server.span_id}-01"
    assert wire.decode_job(msgpack.packb(entry, use_bin_type=True)).trace == entry["tr"]


def test_failed_calls_are_traced_with_their_status(trail: Trail) -> None:
    invalid = one(trail.of_trace(trail.invalid), kind=SERVER)
    assert invalid.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert invalid.status != ERROR  # the caller's fault, not the server's
    assert not [s for s in trail.of_trace(trail.invalid) if s.kind == CONSUMER]  # nothing was queued
    unavailable = one(trail.of_trace(trail.unavailable), kind=SERVER)
    assert unavailable.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert unavailable.status == ERROR and unavailable.status_message.startswith("UNAVAILABLE: ")
    assert unavailable.attributes["embedstream.model"] == IDLE


def test_a_call_the_guard_refuses_is_traced(trail: Trail) -> None:
    [refused] = trail.of_trace(trail.refused)
    assert refused.kind == SERVER and refused.name == "embedstream.v1.Embedder/Embed"
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert refused.attributes["embedstream.tenant"] == "default" and "embedstream.model" not in refused.attributes


def test_a_call_without_traceparent_starts_a_trace(trail: Trail) -> None:
    listed = one(trail.spans, name="embedstream.v1.Embedder/ListModels")
    assert listed.parent_id == "" and listed.kind == SERVER
    assert listed.trace_id not in {trail.embed[0], trail.stream[0], trail.job[0], trail.upload[0]}


def test_no_input_text_in_any_span(trail: Trail) -> None:
    assert len(trail.spans) >= 12
    assert SECRET.split()[0].encode() not in trail.raw_export
    for span in trail.spans:
        assert not any("sentinel" in str(v) for v in span.attributes.values()), span
