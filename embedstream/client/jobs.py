"""What both job handles share while following a job: terminal states, progress bar, deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc

from embedstream.client.retry import RETRYABLE
from embedstream.progress import Progress
from embedstream.v1 import jobs_pb2 as jpb

TERMINAL = (jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED)
C = TypeVar("C")

#: Pause before following a job again after its WatchJob stream broke.
REWATCH_S = 0.2


class Handle(Generic[C]):
    """A job's last known state and the client (sync or async) that follows it."""

    TERMINAL = TERMINAL

    def __init__(self, client: C, job: jpb.Job) -> None:
        self.client = client
        self.job = job

    @property
    def id(self) -> str:
        """The job id; any gateway answers for it until the job expires."""
        return self.job.id


class Watch:
    """One ``wait()``: the progress bar and the deadline across WatchJob reconnects."""

    def __init__(
        self, job: jpb.Job, progress: bool, timeout: float | None, fail: Callable[[grpc.RpcError], Exception]
    ) -> None:
        self.fail = fail
        self.bar = Progress(job.inputs_total or None, f"job {job.id[:8]}", enabled=progress, unit="inputs")
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """The timeout for the next WatchJob call (at least 0.1 s), or None without a deadline."""
        return None if self.deadline is None else max(0.1, self.deadline - time.monotonic())

    def seen(self, job: jpb.Job) -> jpb.Job:
        """Record a state WatchJob sent; returns it."""
        self.bar.update(job.inputs_done + job.inputs_failed, job.inputs_total or None)
        return job

    def broken(self, exc: grpc.RpcError) -> float:
        """Seconds to pause before following again after ``exc``; raises it unless a gateway went away."""
        if exc.code() not in RETRYABLE:
            raise self.fail(exc) from None
        return REWATCH_S

    def close(self) -> None:
        """End the progress bar."""
        self.bar.close()
