"""Video and audio before queueing: input kinds, media options, and each clip checked off the event loop.

A clip's header is read (container, codec, resolution, duration, bytes) and
its packets demuxed without decoding, on a thread, a few clips at a time, so a
burst of uploads neither blocks the loop nor runs many FFmpeg demuxers at once.
The frames (or windows) a clip will be embedded as are counted from its
duration and the request's options, and refused above ``max_media_frames``
with the smallest interval that fits: a worker never holds more.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from embedstream import media, mediawire
from embedstream.errors import InvalidArgument
from embedstream.registry import ModelSpec
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb

MIN_INTERVAL_S = 0.04
MAX_WINDOW_S = 60.0
#: Clips probed at once per gateway process.
PROBES = 2
OUTPUTS = {
    pb.MEDIA_OUTPUT_SEGMENTS: "segments",
    pb.MEDIA_OUTPUT_SEGMENTS_AND_POOLED: "both",
    pb.MEDIA_OUTPUT_POOLED: "pooled",
}
LETTERS = {"text": "t", "image": "i", "video": "v", "audio": "a"}
#: Inputs per chunk entry of a job holding video or audio: each clip is an entry of its own.
JOB_CHUNK = 1

_probes: dict[int, asyncio.Semaphore] = {}


def kinds_of(inputs: Sequence[pb.Input]) -> str:
    """One letter per input (``mediawire.KINDS``) when any is video or audio, else ""."""
    kinds = "".join(LETTERS.get(item.WhichOneof("content") or "", "t") for item in inputs)
    return kinds if any(k in mediawire.MEDIA_KINDS for k in kinds) else ""


def kinds_only_with_media(kinds: str) -> str:
    """``kinds`` where it names a video or audio input, else "" (an entry of texts and images)."""
    return kinds if any(k in mediawire.MEDIA_KINDS for k in kinds) else ""


def job_kinds(inputs: Sequence[pb.Input], size: int, start: int) -> str:
    """The kinds of an upload's chunk of inputs (all letters, for slicing); a clip in a job whose
    header set no media (entries of ``size`` inputs, too large for clips) is refused."""
    kinds = "".join(LETTERS.get(item.WhichOneof("content") or "", "t") for item in inputs)
    for i, kind in enumerate(kinds, start):
        if kind in mediawire.MEDIA_KINDS and size != JOB_CHUNK:
            name = mediawire.KINDS[kind]
            raise InvalidArgument(
                f"inputs[{i}].{name}: a job with video or audio sets media in its header (spec.media), "
                "so each clip is an entry of its own"
            )
    return kinds


def job_results(embeddings: list[Any], chunk_start: int, first: int) -> list[Any]:
    """The JobResults of one stored chunk whose reply holds segments: each input's vectors in
    ``chunks``, its Segment.input its index in the job; from input ``first`` on."""
    from embedstream.v1 import jobs_pb2 as jpb

    results: dict[int, Any] = {}
    for embedding in embeddings:
        embedding.segment.input += chunk_start
        index = embedding.segment.input
        results.setdefault(index, jpb.JobResult(index=index)).chunks.append(embedding)
    return [results[i] for i in sorted(results) if i >= first]


def options(msg: Any, spec: ModelSpec, prefix: str = "") -> mediawire.Media:
    """The checked MediaOptions of an EmbedRequest or JobSpec (defaults where unset)."""
    if not msg.HasField("media"):
        return mediawire.DEFAULT
    m = msg.media
    where = f"{prefix}media"
    if m.output not in OUTPUTS:
        raise InvalidArgument(f"{where}.output: unknown value {m.output}")
    if m.segments not in pb.MediaSegments.values():
        raise InvalidArgument(f"{where}.segments: unknown value {m.segments}")
    for name in ("frame_interval_s", "scene_threshold", "window_s"):
        value = getattr(m, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{where}.{name}: must be a finite number >= 0, not {value}")
    if m.frame_interval_s and m.frame_interval_s < MIN_INTERVAL_S:
        raise InvalidArgument(f"{where}.frame_interval_s: at least {MIN_INTERVAL_S} s")
    if m.scene_threshold > 1:
        raise InvalidArgument(
            f"{where}.scene_threshold: a mean frame difference between 0 and 1, not {m.scene_threshold}"
        )
    if m.window_s > MAX_WINDOW_S or (m.window_s and m.window_s < 0.1):
        raise InvalidArgument(f"{where}.window_s: between 0.1 and {MAX_WINDOW_S:g} s (0: the model's)")
    overlap = -1.0
    if m.HasField("overlap_s"):
        overlap = m.overlap_s
        window = m.window_s or mediawire.WINDOW_S
        if not math.isfinite(overlap) or overlap < 0 or overlap >= window:
            raise InvalidArgument(f"{where}.overlap_s: at least 0 and less than the window ({window:g} s)")
    if m.segments == pb.MEDIA_SEGMENTS_SCENES and "video" not in spec.takes:
        raise InvalidArgument(f"{where}.segments: scenes are cut in video; model {spec.name!r} takes no video")
    return mediawire.Media(
        frame_interval_s=m.frame_interval_s,
        scenes=m.segments == pb.MEDIA_SEGMENTS_SCENES,
        scene_threshold=m.scene_threshold,
        window_s=m.window_s,
        overlap_s=overlap,
        output=OUTPUTS[m.output],
    )


def refuse_kind(kind: str, field: str, spec: ModelSpec) -> InvalidArgument:
    """The error for an input of a kind the model does not take, naming what it takes."""
    takes = spec.takes
    only = f"{takes[0]} only" if len(takes) == 1 else ", ".join(takes)
    return InvalidArgument(f"{field}.{kind}: model {spec.name!r} is a {spec.family} model and takes {only}")


def frames_of(kind: str, info: media.Info, opts: mediawire.Media) -> tuple[int, str, float]:
    """(frames or windows at most, the option that sets them, the smallest value that fits) of one clip."""
    if kind == "v":
        interval = opts.frame_interval_s or mediawire.FRAME_INTERVAL_S
        return media.segments_at_most(info.duration_s, interval) + 1, "frame_interval_s", interval
    window = opts.window_s or mediawire.WINDOW_S
    overlap = opts.overlap_s if opts.overlap_s >= 0 else window / 4
    return media.segments_at_most(info.duration_s, window - overlap, window), "window_s", window


async def verify(
    inputs: Sequence[Any],
    kinds: str,
    opts: mediawire.Media,
    settings: Settings,
    field: str = "inputs",
    start: int = 0,
) -> None:
    """Check every video and audio input off the event loop; the first bad one is refused, named."""
    pending = [(i, k, item) for i, (k, item) in enumerate(zip(kinds, inputs), start) if k in mediawire.MEDIA_KINDS]
    if not pending:
        return
    loop = asyncio.get_running_loop()
    gate = _probes.setdefault(id(loop), asyncio.Semaphore(PROBES))

    def check(i: int, kind: str, data: Any) -> None:
        name = mediawire.KINDS[kind]
        try:
            info = media.verify(name, bytes(data), media.limits(settings, name))
        except media.MediaError as exc:
            raise InvalidArgument(f"{field}[{i}].{name}: {exc}") from None
        frames, option, value = frames_of(kind, info, opts)
        if frames > settings.max_media_frames:
            unit = "frames" if kind == "v" else "windows"
            raise InvalidArgument(
                f"{field}[{i}].{name}: {info.duration_s:.0f} s make up to {frames} {unit} at media.{option} "
                f"{value:g}, over the limit of {settings.max_media_frames} per input; raise media.{option} or "
                "split the clip"
            )

    for i, kind, data in pending:
        async with gate:
            await loop.run_in_executor(None, check, i, kind, data)
