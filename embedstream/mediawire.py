"""The video and audio parts of the queue wire format: input kinds, media options, segments.

:mod:`embedstream.wire` calls these for entries that hold video or audio, and
:mod:`embedstream.replywire` for replies that carry segments (wire version 5, above text
operations' 3 and outputs' 4; the kinds ride under ``mk``); a segment travels as
``SEGMENT_FIELDS`` integers (times in microseconds), so the reply stays a flat msgpack list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Input kinds in ``Job.kinds``: one letter per input.
KINDS = {"t": "text", "i": "image", "v": "video", "a": "audio"}
MEDIA_KINDS = ("v", "a")
MEDIA_OUTPUTS = ("segments", "both", "pooled")
#: What MediaOptions' zero values mean (docs/media.md): the gateway counts frames with them,
#: workers sample with them. The audio window is the model's own; the gateway assumes CLAP's.
FRAME_INTERVAL_S = 1.0
SCENE_THRESHOLD = 0.15
WINDOW_S = 10.0
#: Integers per vector in ``Reply.segments``: input, index, start us, end us, pooled, frames.
SEGMENT_FIELDS = 6


@dataclass(frozen=True, slots=True)
class Segment:
    """Where one vector of a reply lies: its input, its number, its times, what it pools."""

    input: int
    index: int
    start_s: float
    end_s: float
    pooled: bool = False
    frames: int = 1

    def flat(self) -> list[int]:
        """The segment as the reply carries it."""
        start, end = round(self.start_s * 1e6), round(self.end_s * 1e6)
        return [self.input, self.index, start, max(start, end), int(self.pooled), self.frames]


@dataclass(frozen=True, slots=True)
class Media:
    """How a request's video and audio inputs are sampled, segmented and returned (0: default)."""

    #: Video: seconds between sampled frames.
    frame_interval_s: float = 0.0
    #: Video: segments end at scene cuts instead of every frame_interval_s.
    scenes: bool = False
    #: Video scenes: the frame difference (0..1) that cuts.
    scene_threshold: float = 0.0
    #: Audio: seconds per window (0 = the model's) and overlap (-1 = window / 4).
    window_s: float = 0.0
    overlap_s: float = -1.0
    #: "segments", "both" (segments, then the pooled vector) or "pooled".
    output: str = "segments"

    def encode(self) -> dict[str, Any]:
        """The options as an entry carries them."""
        return {
            "fi": self.frame_interval_s,
            "sc": self.scenes,
            "th": self.scene_threshold,
            "ws": self.window_s,
            "ov": self.overlap_s,
            "mo": self.output,
        }


DEFAULT = Media()


def flatten(segments: list[Segment]) -> list[int]:
    """Every segment's integers, in order."""
    return [v for s in segments for v in s.flat()]


def unflatten(flat: list[int]) -> list[Segment]:
    """The segments of a reply's ``segments`` list."""
    n = SEGMENT_FIELDS
    return [
        Segment(flat[k], flat[k + 1], flat[k + 2] / 1e6, flat[k + 3] / 1e6, bool(flat[k + 4]), flat[k + 5])
        for k in range(0, len(flat) - n + 1, n)
    ]


def decode_options(body: dict[str, Any], n: int) -> dict[str, Any]:
    """The ``wire.Job`` fields (kinds, media) of an entry's kinds and media options ({} without media);
    a malformed one raises ValueError (``wire`` or ``replywire`` makes it a WireError)."""
    kinds = _typed(body.get("mk", ""), str, "mk")
    if not kinds:
        return {}
    if len(kinds) != n or set(kinds) - set(KINDS):
        raise ValueError("job kinds must be one of t, i, v, a per input")
    for kind, item in zip(kinds, body["t"]):
        if (kind == "t") != isinstance(item, str):
            raise ValueError("job kinds do not match the inputs' types")
    md = _typed(body.get("md", {}), dict, "md")
    output = _typed(md.get("mo", "segments"), str, "mo")
    if output not in MEDIA_OUTPUTS:
        raise ValueError(f"unknown media output {output!r}")
    media = Media(
        frame_interval_s=_number(md.get("fi", 0.0), "fi"),
        scenes=_typed(md.get("sc", False), bool, "sc"),
        scene_threshold=_number(md.get("th", 0.0), "th"),
        window_s=_number(md.get("ws", 0.0), "ws"),
        overlap_s=_number(md.get("ov", -1.0), "ov"),
        output=output,
    )
    return {"kinds": kinds, "media": media}


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"field {key!r} must be a number")
    return float(value)


def _typed(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be {kind.__name__}")
    return value
