"""Audio decoding for audio-text models: mono, resampled to the model's rate, cut into windows.

The clip is decoded frame by frame (PyAV: WAV, FLAC, MP3, OGG), each frame
mixed down to mono (the mean of its channels) and resampled as a stream
(soxr, high quality) to the model's rate; windows are cut as soon as their
samples are there and handed to ``prepare`` (the model's feature extractor),
and the samples no later window needs are dropped. So memory holds one
window of samples plus the prepared features, never the decoded clip.

Windows start every ``window - overlap`` seconds; the last one may be shorter
(the model pads it its own way) and exists only where it holds audio the
window before did not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstream import media

INTEGER_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}


@dataclass(slots=True)
class Windows:
    """What one clip became: a prepared window each, with its start and end (seconds)."""

    prepared: list[Any] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    duration_s: float = 0.0


class _Cutter:
    """Cuts windows from a stream of mono samples at the model's rate."""

    def __init__(self, rate: int, window_s: float, overlap_s: float, prepare: Callable[[np.ndarray], Any]) -> None:
        self.rate = rate
        self.size = max(1, round(window_s * rate))
        self.overlap = min(self.size - 1, max(0, round(overlap_s * rate)))
        self.hop = self.size - self.overlap
        self.prepare = prepare
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0  # the position of buffer[0] in the clip, in samples
        self.start = 0  # the next window's start
        self.out = Windows()

    def feed(self, samples: np.ndarray, max_windows: int) -> None:
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float32, copy=False)])
        while self.offset + len(self.buffer) >= self.start + self.size:
            self._emit(self.start + self.size, max_windows)

    def finish(self, max_windows: int) -> Windows:
        total = self.offset + len(self.buffer)
        while self.start < total and (not self.out.spans or self.start + self.overlap < total):
            self._emit(min(total, self.start + self.size), max_windows)
        self.out.duration_s = total / self.rate
        return self.out

    def _emit(self, stop: int, max_windows: int) -> None:
        if len(self.out.spans) >= max_windows:
            raise media.MediaError(
                f"more than {max_windows} windows to embed (the limit per input); raise media.window_s "
                "or lower media.overlap_s"
            )
        lo = self.start - self.offset
        self.out.prepared.append(self.prepare(self.buffer[lo : lo + (stop - self.start)].copy()))
        self.out.spans.append((self.start / self.rate, stop / self.rate))
        self.start += self.hop
        drop = min(len(self.buffer), self.start - self.offset)
        self.buffer = self.buffer[drop:]
        self.offset += drop


def windows(
    data: bytes,
    limits: media.Limits,
    rate: int,
    window_s: float,
    overlap_s: float,
    prepare: Callable[[np.ndarray], Any],
    max_windows: int,
) -> Windows:
    """Decode ``data`` into prepared windows; :class:`media.MediaError` for a refused or broken clip."""
    import av
    import soxr

    info = media.probe("audio", data, limits)  # a forged entry never reached the gateway's checks
    container, name = media.open_container("audio", data)
    cutter = _Cutter(rate, window_s, overlap_s, prepare)
    resampler: Any = None
    source_rate = 0
    decoded = 0
    with container:
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                mono = mono_of(frame)
                if source_rate == 0:
                    source_rate = int(frame.sample_rate or info.sample_rate)
                    if source_rate != rate:
                        resampler = soxr.ResampleStream(source_rate, rate, 1, dtype="float32", quality="HQ")
                decoded += len(mono)
                if decoded > limits.max_seconds * source_rate:
                    raise media.MediaError(f"decodes past the limit of {limits.max_seconds:g} s")
                cutter.feed(mono if resampler is None else resampler.resample_chunk(mono), max_windows)
        except av.FFmpegError as exc:
            raise media.MediaError(f"corrupt {name} data ({type(exc).__name__})") from None
    if resampler is not None:
        cutter.feed(resampler.resample_chunk(np.zeros(0, np.float32), last=True), max_windows)
    if not decoded:
        raise media.MediaError(f"no decodable audio in the {name} file")
    return cutter.finish(max_windows)


def mono_of(frame: Any) -> np.ndarray:
    """One decoded audio frame as float32 mono samples: the mean of its channels."""
    planes = frame.to_ndarray()
    fmt = frame.format
    if not fmt.is_planar:  # interleaved: (1, samples * channels)
        planes = planes.reshape(-1, len(frame.layout.channels)).T
    base = fmt.name.rstrip("p")
    if base in INTEGER_SCALE:  # integer PCM to [-1, 1), as every float decoder gives it
        samples = ((planes.astype(np.float64) - (128 if base == "u8" else 0)) / INTEGER_SCALE[base]).astype(np.float32)
    else:
        samples = planes.astype(np.float32, copy=False)
    mono: np.ndarray = samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]
    return mono
