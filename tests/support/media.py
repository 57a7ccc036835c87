"""Video and audio files for tests, encoded on the spot with PyAV.

Videos are scenes of solid colours (with a little per-scene texture, so a
model sees different pictures) that cut at known times; audio is sine tones.
Hostile files: a one-frame 8K video (a resolution bomb in 100 KB), a tiny video
whose header declares ten hours, truncated files and random bytes.
"""

from __future__ import annotations

import fractions
import io
import os
import tempfile
from collections.abc import Sequence

import av
import numpy as np

SUFFIX = {
    "mp4": ".mp4",
    "webm": ".webm",
    "matroska": ".mkv",
    "wav": ".wav",
    "flac": ".flac",
    "mp3": ".mp3",
    "ogg": ".ogg",
}
VIDEO_CODEC = {"mp4": "libx264", "webm": "libvpx-vp9", "matroska": "libx264"}
AUDIO_CODEC = {"wav": "pcm_s16le", "flac": "flac", "mp3": "libmp3lame", "ogg": "libopus"}


def _written(fmt: str, write) -> bytes:  # type: ignore[no-untyped-def]
    # Muxers seek back to finish their headers: a real file, not a BytesIO.
    fd, path = tempfile.mkstemp(suffix=SUFFIX[fmt])
    os.close(fd)
    try:
        with av.open(path, "w", format=fmt) as out:
            write(out)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.remove(path)


def scene(color: Sequence[int], seed: int, size: tuple[int, int]) -> np.ndarray:
    """One scene's picture: a solid colour with a faint pattern of its own."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = np.empty((height, width, 3), np.float32)
    base[:] = color
    pattern = rng.integers(-24, 24, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
    return np.clip(base + pattern[:height, :width], 0, 255).astype(np.uint8)


COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210)]


def video(
    scenes: Sequence[float] = (2.0, 1.5, 2.5),
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    fmt: str = "mp4",
) -> bytes:
    """A video of ``len(scenes)`` scenes lasting the given seconds each; cuts at their running sums."""

    def write(out) -> None:  # type: ignore[no-untyped-def]
        stream = out.add_stream(VIDEO_CODEC[fmt], rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for k, seconds in enumerate(scenes):
            picture = scene(COLORS[k % len(COLORS)], k, size)
            for _ in range(round(seconds * fps)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)

    return _written(fmt, write)


def cuts(scenes: Sequence[float]) -> list[float]:
    """The times (s) where the scenes of :func:`video` change."""
    return [float(t) for t in np.cumsum(scenes)[:-1]]


def big_frame(width: int = 7680, height: int = 4320) -> bytes:
    """One black 8K frame in H.264: ~100 KB that decodes to 33 million pixels."""

    def write(out) -> None:  # type: ignore[no-untyped-def]
        stream = out.add_stream("libx264", rate=1, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)

    return _written("mp4", write)


def long_header(hours: float = 10.0, fmt: str = "matroska") -> bytes:
    """A 1-second video whose last packet is stamped ``hours`` later: its header declares that long."""
    source = av.open(io.BytesIO(video((1.0,), fmt="matroska")))

    def write(out) -> None:  # type: ignore[no-untyped-def]
        stream = out.add_stream_from_template(source.streams.video[0])
        packets = [p for p in source.demux(video=0) if p.dts is not None]
        for i, packet in enumerate(packets):
            if i == len(packets) - 1:
                shift = int(hours * 3600 / packet.time_base)
                packet.pts += shift
                packet.dts += shift
            packet.stream = stream
            out.mux(packet)

    return _written(fmt, write)


def tone_samples(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine tone (amplitude 0.5) as float32 (channels, samples); channel k a fifth higher each."""
    t = np.arange(round(seconds * rate)) / rate
    rows = [0.5 * np.sin(2 * np.pi * freq * (1.5**k) * t) for k in range(channels)]
    return np.asarray(rows, np.float32)


def tones(parts: Sequence[tuple[float, float]], rate: int) -> np.ndarray:
    """Mono float32 samples of consecutive tones: (seconds, frequency) each."""
    return np.concatenate([tone_samples(s, rate, f)[0] for s, f in parts])


def audio(samples: np.ndarray, rate: int, fmt: str = "wav") -> bytes:
    """``samples`` (float32, (channels, n) or (n,)) encoded as ``fmt`` at ``rate`` Hz."""
    planar = np.atleast_2d(samples).astype(np.float32)
    layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
    codec = AUDIO_CODEC[fmt]

    def write(out) -> None:  # type: ignore[no-untyped-def]
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.time_base = fractions.Fraction(1, rate)
        step = 1024 if codec != "libopus" else 960
        fmt_name = stream.codec_context.format.name if stream.codec_context.format else "fltp"
        for start in range(0, planar.shape[1], step):
            part = np.ascontiguousarray(planar[:, start : start + step])
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = fractions.Fraction(1, rate)
            if fmt_name != "fltp":
                frame = _convert(frame, fmt_name, layout, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)

    return _written(fmt, write)


def _convert(frame, fmt_name: str, layout: str, rate: int):  # type: ignore[no-untyped-def]
    out = av.AudioResampler(format=fmt_name, layout=layout, rate=rate).resample(frame)
    return out[0]


def truncated(data: bytes, share: float = 0.6) -> bytes:
    """The first ``share`` of ``data``."""
    return data[: int(len(data) * share)]


def random_bytes(n: int = 50_000, seed: int = 7) -> bytes:
    """Noise that is no media file at all."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
