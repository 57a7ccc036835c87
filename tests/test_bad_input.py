"""The bad-input matrix: every kind of bad input gets the same precise status on the unary,
stream and job paths, names its field, creates no Redis key and crashes no process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from tests.conftest import Service
from tests.support.images import png_bomb, truncated_jpeg
from tests.support.models import REGISTRY
from tests.support.processes import Proc, start_gateway

PATHS = ("unary", "stream", "job")
#: Placeholder swapped for invalid UTF-8 in the serialized request.
MARK = "\u2603MARK\u2603"
BAD_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xff"
assert len(BAD_UTF8) == len(MARK.encode())  # the swap keeps every length prefix right


@dataclass(frozen=True)
class Case:
    name: str
    code: grpc.StatusCode
    #: What the message must name, per path (one string for all paths, or a dict).
    names: str | dict[str, str]
    inputs: Callable[[str], list[pb.Input]]
    model: str = "debug"
    options: dict[str, object] = field(default_factory=dict)

    def named(self, path: str) -> str:
        return self.names if isinstance(self.names, str) else self.names[path]


def texts(*items: str) -> Callable[[str], list[pb.Input]]:
    return lambda path: [pb.Input(text=t) for t in items]


def many(path: str) -> list[pb.Input]:
    # One over the limit of each path: 256 per request, 10,000 inline per SubmitJob.
    return [pb.Input(text="a")] * (10_001 if path == "job" else 257)


CASES = [
    Case("no inputs", grpc.StatusCode.INVALID_ARGUMENT, "inputs", texts()),
    Case("empty string", grpc.StatusCode.INVALID_ARGUMENT, "inputs[1].text", texts("fine", "")),
    Case("1 MB text", grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].text", texts("x" * 1_000_000)),
    Case("invalid UTF-8", grpc.StatusCode.INVALID_ARGUMENT, "UTF-8", texts("fine", MARK)),
    Case(
        "oversize message",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
        texts("y" * 34_000_000, "z" * 34_000_000),
    ),
    Case("unknown model", grpc.StatusCode.NOT_FOUND, "no-such-model", texts("x"), model="no-such-model"),
    Case("path-like model", grpc.StatusCode.NOT_FOUND, "../../etc/passwd", texts("x"), model="../../etc/passwd"),
    Case("hash-tag model", grpc.StatusCode.NOT_FOUND, "}{m:debug", texts("x"), model="}{m:debug"),
    Case("too many inputs", grpc.StatusCode.INVALID_ARGUMENT, "inputs", many),
    Case(
        "bad dimensions",
        grpc.StatusCode.INVALID_ARGUMENT,
        {"unary": "dimensions", "stream": "dimensions", "job": "spec.dimensions"},
        texts("x"),
        options={"dimensions": 12},
    ),
    Case(
        "corrupt image",
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].image",
        lambda path: [pb.Input(image=truncated_jpeg())],
        model="pics",
    ),
    Case(
        "image bomb",
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].image",
        lambda path: [pb.Input(image=png_bomb())],
        model="pics",
    ),
    Case(
        "image for a text model",
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0]",
        lambda path: [pb.Input(image=b"\x89PNG")],
    ),
]


@pytest.fixture(scope="module")
def gateway(service: Service, tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[tuple[Proc, int]]:
    """A gateway whose registry also names an image model (no worker needed: images are
    refused before anything is queued)."""
    root = tmp_path_factory.mktemp("matrix")
    (root / "pics").mkdir()
    registry = root / "models.toml"
    registry.write_text(REGISTRY + '\n[models.pics]\nfamily = "image-text"\npath = "pics"\nbackend = "open_clip"\n')
    proc, port = start_gateway(dict(service.env, EMBEDSTREAM_REGISTRY=str(registry)), log_dir)
    yield proc, port
    proc.stop()


def serialized(message: object) -> bytes:
    raw = message.SerializeToString()  # type: ignore[attr-defined]
    return raw.replace(MARK.encode(), BAD_UTF8)


def call(port: int, path: str, case: Case) -> grpc.RpcError:
    """Send ``case`` down ``path``; return the error it got (fails if it got none)."""
    inputs = case.inputs(path)
    options = dict(case.options)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]) as channel:
        try:
            if path == "job":
                spec = jpb.JobSpec(model=case.model, **options)  # type: ignore[arg-type]
                body = serialized(jpb.SubmitJobRequest(spec=spec, inputs=inputs))
                method = channel.unary_unary("/embedstream.v1.Jobs/SubmitJob")
                method(body, timeout=30)
            else:
                request = pb.EmbedRequest(model=case.model, request_id="bad", inputs=inputs, **options)  # type: ignore[arg-type]
                body = serialized(request)
                if path == "unary":
                    channel.unary_unary("/embedstream.v1.Embedder/Embed")(body, timeout=30)
                else:
                    list(channel.stream_stream("/embedstream.v1.Embedder/EmbedStream")(iter([body]), timeout=30))
        except grpc.RpcError as exc:
            return exc
    raise AssertionError(f"{case.name} on the {path} path was accepted")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_the_same_status_on_every_path(
    case: Case, gateway: tuple[Proc, int], service: Service, r: redis.Redis
) -> None:
    proc, port = gateway
    before = set(r.keys("*"))
    for path in PATHS:
        err = call(port, path, case)
        assert err.code() == case.code, (path, err.code(), err.details())
        assert case.named(path) in (err.details() or ""), (path, err.details())
    created = {k for k in set(r.keys("*")) - before if b":replies" not in k}
    assert created == set(), f"{case.name} created keys {created}"
    assert proc.alive() and all(w.alive() for w in service.workers.values()) and service.gateway.alive()
