"""Video and audio for both clients: clips from paths, bytes or numpy arrays, requests, and results.

A clip is a path (read as is), encoded bytes (MP4/WebM/MKV video, WAV/FLAC/MP3/OGG
audio), or a numpy array: video frames (n, height, width, 3) uint8 at ``rate``
frames per second, encoded to MP4 (H.264) with PyAV, or audio samples (n,) or
(channels, n) float at ``rate`` Hz, written as a 32-bit float WAV (exact, no
dependency). Each clip goes in a request of its own; its result is a
:class:`MediaEmbedding`: one row per segment with its times, and the pooled
vector of the whole clip when asked.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb

#: A clip as the clients take it.
Clip = str | os.PathLike[str] | bytes | np.ndarray
KINDS = ("video", "audio")
OUTPUTS = {
    "segments": pb.MEDIA_OUTPUT_SEGMENTS,
    "both": pb.MEDIA_OUTPUT_SEGMENTS_AND_POOLED,
    "pooled": pb.MEDIA_OUTPUT_POOLED,
}


@dataclass(frozen=True, eq=False)
class MediaEmbedding:
    """One clip's vectors: a row per segment (``start_s``/``end_s`` in seconds, ``frames`` embedded
    in each), and ``pooled``, the whole clip's vector, when the call asked for it."""

    vectors: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    frames: np.ndarray
    pooled: np.ndarray | None = None
    #: Seconds of the clip that were embedded (the end of its last segment).
    duration_s: float = 0.0

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class Sampling:
    """How clips become segments (docs/media.md); zero values leave the server's defaults.

    Video: a frame every ``frame_interval_s`` (1 s), one segment each, or with ``scenes`` one
    segment per scene (its frames averaged). Audio: windows of ``window_s`` (the model's own)
    overlapping by ``overlap_s`` (a quarter window). ``output``: "segments", "both" (segments
    and the pooled vector of the clip) or "pooled".
    """

    frame_interval_s: float = 0.0
    scenes: bool = False
    window_s: float = 0.0
    overlap_s: float | None = None
    output: str = "segments"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {sorted(OUTPUTS)}")

    def message(self) -> pb.MediaOptions:
        """The MediaOptions of a request or job."""
        opts = pb.MediaOptions(
            frame_interval_s=self.frame_interval_s,
            segments=pb.MEDIA_SEGMENTS_SCENES if self.scenes else pb.MEDIA_SEGMENTS_INTERVAL,
            window_s=self.window_s,
            output=OUTPUTS[self.output],
        )
        if self.overlap_s is not None:
            opts.overlap_s = self.overlap_s
        return opts


DEFAULT = Sampling()


def encoded(clip: Clip, kind: str, rate: float = 0) -> bytes:
    """The encoded bytes of ``clip`` (a path, bytes, or a numpy array at ``rate``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if isinstance(clip, bytes):
        return clip
    if isinstance(clip, np.ndarray):
        if rate <= 0:
            raise ValueError("a numpy clip needs rate= (frames per second for video, Hz for audio)")
        return mp4(clip, rate) if kind == "video" else wav(clip, int(rate))
    return Path(clip).read_bytes()


def wav(samples: np.ndarray, rate: int) -> bytes:
    """``samples`` ((n,) or (channels, n)) as a 32-bit float WAV file."""
    planar = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    channels = planar.shape[0]
    data = np.ascontiguousarray(planar.T).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def mp4(frames: np.ndarray, fps: float) -> bytes:
    """RGB frames (n, height, width, 3) uint8 as an H.264 MP4 (needs PyAV: ``pip install av``)."""
    import tempfile

    import av

    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError("video frames must be an array of shape (n, height, width, 3)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=round(fps))
            stream.height, stream.width = (int(frames.shape[1]) // 2 * 2, int(frames.shape[2]) // 2 * 2)
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
                out.mux(stream.encode(picture))
            out.mux(stream.encode())
        return path.read_bytes()


def request(model: str, kind: str, data: bytes, opts: pb.MediaOptions, normalize: bool | None) -> pb.EmbedRequest:
    """An EmbedRequest for one clip, vectors as packed float32."""
    item = pb.Input(video=data) if kind == "video" else pb.Input(audio=data)
    req = pb.EmbedRequest(model=model, inputs=[item], media=opts, encoding=pb.VECTOR_ENCODING_PACKED_F32LE)
    if normalize is not None:
        req.normalize = normalize
    return req


def requests(
    model: str, kind: str, clips: Sequence[Clip], opts: pb.MediaOptions, normalize: bool | None, rate: float
) -> Iterator[pb.EmbedRequest]:
    """One request per clip, each read (or encoded) as it is sent."""
    if isinstance(clips, str | bytes | np.ndarray | os.PathLike):
        raise TypeError("embed_media() takes a sequence of clips; wrap a single clip in a list")
    return (request(model, kind, encoded(c, kind, rate), opts, normalize) for c in clips)


def result(embeddings: Iterable[pb.Embedding], dimensions: int) -> MediaEmbedding:
    """One clip's Embeddings (each with its Segment) as a :class:`MediaEmbedding`."""
    rows, starts, ends, frames, pooled, duration = [], [], [], [], None, 0.0
    for e in embeddings:
        vector = np.frombuffer(e.packed, dtype="<f4") if e.packed else np.array(e.values, dtype=np.float32)
        duration = max(duration, e.segment.end_s)
        if e.segment.pooled:
            pooled = vector.astype(np.float32)
            continue
        rows.append(vector)
        starts.append(e.segment.start_s)
        ends.append(e.segment.end_s)
        frames.append(e.segment.frames)
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dimensions), np.float32)
    return MediaEmbedding(matrix, np.array(starts), np.array(ends), np.array(frames, dtype=np.int64), pooled, duration)


def upload_messages(
    spec: jpb.JobSpec, clips: Iterable[Clip], kind: str, sampling: Sampling, rate: float
) -> Iterator[jpb.UploadJobRequest]:
    """An UploadJob stream of clips: the header (its ``media`` set: one clip per entry), then a
    chunk per clip, each read as it is sent."""
    spec.media.CopyFrom(sampling.message())
    yield jpb.UploadJobRequest(header=spec)
    for clip in clips:
        data = encoded(clip, kind, rate)
        item = pb.Input(video=data) if kind == "video" else pb.Input(audio=data)
        yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=[item]))


def is_media(result: Any) -> bool:
    """Whether a JobResult holds a clip's segments."""
    return bool(result.chunks) and result.chunks[0].HasField("segment")
