"""Video decoding for image+text models: frames sampled every N seconds, or per scene.

The clip is decoded once, frame by frame (PyAV), and only sampled frames are
converted to RGB and handed to ``prepare`` (the model's image preprocessing) at
once, so what stays in memory is one preprocessed tensor per sampled frame,
never a decoded clip; more than ``max_frames`` of them refuse the clip.

Sampling: the first frame at or after every multiple of the interval. Scenes:
every frame is shrunk to a small RGB thumbnail and compared with the one
before; where the mean absolute difference (0..1) passes the threshold a new
scene starts (not within ``MIN_SCENE_S`` of the last cut, so a flash is not a
scene). Each scene's first frame is sampled, then one every interval after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstream import media

#: Thumbnail side (pixels) of the scene-change comparison.
THUMB = 32
#: A cut closer than this to the scene's start is ignored (flashes, fades).
MIN_SCENE_S = 0.5
#: Times within this of a sampling point count as on it (timestamps are rounded by containers).
EPS_S = 1e-3


@dataclass(slots=True)
class Sampled:
    """What one clip became: prepared frames, their times, and the segments grouping them."""

    frames: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    #: (start s, end s, indices into frames) per segment, in time order.
    segments: list[tuple[float, float, list[int]]] = field(default_factory=list)
    duration_s: float = 0.0


def sample(
    data: bytes,
    limits: media.Limits,
    prepare: Callable[[Any], Any],
    interval_s: float,
    scenes: bool,
    threshold: float,
    max_frames: int,
) -> Sampled:
    """Decode ``data`` and sample it; :class:`media.MediaError` for a refused or broken clip."""
    import av

    media.probe("video", data, limits)  # a forged entry never reached the gateway's checks
    container, name = media.open_container("video", data)
    out = Sampled()
    starts: list[float] = []  # the start time of each segment (scene, or sampled frame)
    owner: list[int] = []  # the segment of each sampled frame
    next_t = 0.0
    scene_start = 0.0
    previous: np.ndarray | None = None
    end = 0.0
    with container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        try:
            for k, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else k / rate
                end = max(end, t + 1.0 / rate)
                if end > limits.max_seconds:
                    raise media.MediaError(f"decodes past the limit of {limits.max_seconds:g} s")
                if scenes:
                    thumb = frame.reformat(width=THUMB, height=THUMB, format="rgb24").to_ndarray().astype(np.float32)
                    cut = previous is None or (
                        float(np.abs(thumb - previous).mean()) / 255.0 > threshold and t - scene_start >= MIN_SCENE_S
                    )
                    previous = thumb
                    if cut:
                        scene_start = next_t = t
                        starts.append(t)
                if t + EPS_S < next_t:
                    continue
                if len(out.frames) >= max_frames:
                    raise media.MediaError(
                        f"more than {max_frames} frames to embed (the limit per input); raise "
                        "media.frame_interval_s" + (" or media.scene_threshold" if scenes else "")
                    )
                out.frames.append(prepare(frame.to_image()))
                out.times.append(t)
                if not scenes:
                    starts.append(t)
                owner.append(len(starts) - 1)
                # The next sampling point after t, on the grid of this segment's start.
                origin = scene_start if scenes else 0.0
                next_t = origin + (np.floor((t - origin + EPS_S) / interval_s) + 1) * interval_s
        except av.FFmpegError as exc:
            raise media.MediaError(f"corrupt {name} data ({type(exc).__name__})") from None
    if not out.frames:
        raise media.MediaError(f"no decodable frame in the {name} file")
    out.duration_s = end
    groups: list[list[int]] = [[] for _ in starts]
    for i, segment in enumerate(owner):
        groups[segment].append(i)
    out.segments = list(zip(starts, [*starts[1:], end], groups))
    return out
