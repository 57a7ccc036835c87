"""Answers Redis refuses to store, for real: Redis fills up after a worker read an entry and
before it stores the answer.

The worker must not acknowledge the entry; it counts the refusal
(``embedstream_worker_unstored_total``), hands the entry back unacknowledged with the
refused delivery uncounted, and runs it again once memory frees, so the caller gets its
answer exactly once: a reply for an Embed call, a job chunk's results, a dead letter.
"""

from __future__ import annotations

import grpc
import numpy as np
import redis

from embedstream import keys
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc
from embedstream.workers.debug import DEBUG_RAISE
from tests.support.faults import Cluster, expected, metrics_port
from tests.support.processes import scrape, stub, wait_until

#: Inputs per call: the debug models run 4 per batch at 100 ms a batch, so a worker holds the
#: entry for about a second between reading it and storing its answer.
INPUTS = 40


def unstored(port: int, model: str, kind: str) -> float:
    return scrape(port).get(f'embedstream_worker_unstored_total{{kind="{kind}",model="{model}"}}', 0.0)


def replies(port: int, model: str) -> float:
    return scrape(port).get(f'embedstream_worker_replies_total{{model="{model}"}}', 0.0)


def full_while_held(r: redis.Redis, stream: str, port: int, model: str, kind: str) -> None:
    """Once the worker has read the one entry of ``stream``, fill Redis until the worker gives up
    storing the entry's ``kind`` of answer; check the entry is neither acknowledged nor deleted
    and nothing was stored; then free the memory."""
    before = unstored(port, model, kind)
    dead = r.xlen(keys.dead_letters(model))
    wait_until(lambda: r.xpending(stream, keys.GROUP)["pending"] == 1, 30, 0.01, what="the worker to read the entry")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)  # full: every write that needs memory is refused
    try:
        wait_until(lambda: unstored(port, model, kind) > before, 30, what=f"the worker to give up storing ({kind})")
        assert r.xlen(stream) == 1 and r.xpending(stream, keys.GROUP)["pending"] == 1
        assert r.xlen(keys.dead_letters(model)) == dead
    finally:
        r.config_set("maxmemory", 0)


def test_a_reply_and_a_job_result_redis_refuses_run_again_and_arrive_once(cluster: Cluster) -> None:
    gateway_metrics, worker_metrics = metrics_port(), metrics_port()
    _, port = cluster.gateway(EMBEDSTREAM_METRICS_PORT=str(gateway_metrics))
    worker = cluster.worker("deep", EMBEDSTREAM_METRICS_PORT=str(worker_metrics))
    r = cluster.r

    texts = [f"refused reply {i}" for i in range(INPUTS)]
    with stub(port) as s:
        call = s.Embed.future(pb.EmbedRequest(model="deep", inputs=[pb.Input(text=t) for t in texts]), timeout=90)
        full_while_held(r, keys.queue("deep"), worker_metrics, "deep", "answer")
        assert not call.done()
        got = call.result(timeout=90)
    vecs = np.array([list(e.values) for e in got.embeddings], dtype=np.float32)
    assert vecs.shape == (INPUTS, 16) and np.abs(vecs - expected(texts)).max() < 1e-5
    assert replies(worker_metrics, "deep") == 1  # stored once: the refused runs stored nothing
    assert scrape(gateway_metrics).get("embedstream_late_replies_total", 0.0) == 0

    chunk = [f"refused chunk {i}" for i in range(64)]  # one chunk of a job
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        spec = jpb.JobSpec(model="deep", normalize=True)
        job_id = jobs.SubmitJob(
            jpb.SubmitJobRequest(spec=spec, inputs=[pb.Input(text=t) for t in chunk]), timeout=30
        ).id
        full_while_held(r, keys.bulk("deep"), worker_metrics, "deep", "answer")
        job = list(jobs.WatchJob(jpb.GetJobRequest(id=job_id), timeout=90))[-1]
        results = list(jobs.GetJobResults(jpb.GetJobResultsRequest(id=job_id), timeout=30))
    assert job.state == jpb.JOB_STATE_SUCCEEDED and job.inputs_done == len(chunk) and job.inputs_failed == 0
    vecs = np.array([list(res.embedding.values) for res in results], dtype=np.float32)
    assert vecs.shape == (len(chunk), 16) and np.abs(vecs - expected(chunk)).max() < 1e-5
    assert replies(worker_metrics, "deep") == 2
    assert cluster.pending(("deep",)) == 0 and r.xlen(keys.queue("deep")) == r.xlen(keys.bulk("deep")) == 0
    assert worker.alive() and not cluster.dead_letters("deep")  # handed back uncounted, never dead-lettered


def test_a_dead_letter_redis_refuses_keeps_its_entry_pending_until_stored(cluster: Cluster) -> None:
    worker_metrics = metrics_port()
    _, port = cluster.gateway()
    worker = cluster.worker("backlog", EMBEDSTREAM_METRICS_PORT=str(worker_metrics))
    r = cluster.r
    # All of one length, so the poison input runs in the last batch: the model raises on it, the
    # entry is rerun alone, raises again, and is dead-lettered about a second after it was read.
    texts = [f"doomed {i:03d}" for i in range(INPUTS - 1)] + [f"{DEBUG_RAISE} x"]
    with stub(port) as s:
        call = s.Embed.future(pb.EmbedRequest(model="backlog", inputs=[pb.Input(text=t) for t in texts]), timeout=90)
        full_while_held(r, keys.queue("backlog"), worker_metrics, "backlog", "dead_letter")
        err = call.exception(timeout=90)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INTERNAL, err
    assert "dead-lettered" in (err.details() or "")
    letters = cluster.dead_letters("backlog")
    assert len(letters) == 1 and b"model error" in letters[0][b"reason"]
    assert cluster.pending(("backlog",)) == 0 and r.xlen(keys.queue("backlog")) == 0
    assert worker.alive()
