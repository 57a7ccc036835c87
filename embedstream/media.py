"""Video and audio checks, shared by the gateway (before queueing) and workers (before decoding).

The gateway refuses a clip by its bytes before anything is queued: the
container is read from the magic bytes and opened with that demuxer only (so
no playlist or concat demuxer ever follows a path or URL written in the data),
then the header's codec, resolution, sample rate and duration are checked
against the limits (a 100 KB file declaring 8K frames or ten hours costs
milliseconds). Only then are the packets read, without decoding, to refuse
truncated or corrupt data, and the first frame decoded once. Workers run the
same checks again on whatever they dequeue, so a forged entry cannot make them
decode a bomb. PyAV (FFmpeg) reads every format.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

#: Containers accepted per kind: (name in messages, FFmpeg demuxer), by their magic bytes.
VIDEO_CONTAINERS = ("MP4", "WebM", "MKV")
AUDIO_CONTAINERS = ("WAV", "FLAC", "MP3", "OGG")
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
AUDIO_CODECS = ("flac", "mp3", "mp3float", "vorbis", "opus", "aac")
#: Packets may end this much before the duration a header declares (encoder delay, rounding).
END_SLACK_S = 0.5
END_SLACK_SHARE = 0.05


class MediaError(ValueError):
    """A video or audio input that is refused; the message says why, for the caller."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one video or audio input may be: bytes, seconds and (video) pixels per frame."""

    max_bytes: int
    max_seconds: float
    max_pixels: int = 0


@dataclass(frozen=True, slots=True)
class Info:
    """What a clip's header (and, after :func:`verify`, its packets) say about it."""

    kind: str
    container: str
    codec: str
    #: Seconds; 0 when the header does not say (then :func:`verify` finds it from the packets).
    duration_s: float
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0


def limits(settings: Any, kind: str) -> Limits:
    """The limits of ``kind`` ("video" or "audio") in a process's settings."""
    if kind == "video":
        return Limits(settings.max_video_bytes, settings.max_video_seconds, settings.max_video_pixels)
    return Limits(settings.max_audio_bytes, settings.max_audio_seconds)


def sniff(kind: str, data: bytes) -> tuple[str, str]:
    """(container name, FFmpeg demuxer) that ``data`` claims by its magic bytes, or :class:`MediaError`."""
    head = data[:16]
    found: tuple[str, str] | None = None
    if head[4:8] == b"ftyp":
        found = ("MP4", "mp4")
    elif head[:4] == b"\x1a\x45\xdf\xa3":
        found = ("WebM" if b"webm" in data[:64] else "MKV", "matroska")
    elif head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        found = ("WAV", "wav")
    elif head[:4] == b"fLaC":
        found = ("FLAC", "flac")
    elif head[:4] == b"OggS":
        found = ("OGG", "ogg")
    elif head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        found = ("MP3", "mp3")
    allowed = VIDEO_CONTAINERS if kind == "video" else AUDIO_CONTAINERS
    if found is None or found[0] not in allowed:
        names = "MP4, WebM or MKV" if kind == "video" else "WAV, FLAC, MP3 or OGG"
        what = f"{found[0]} data" if found else "data of an unknown format"
        raise MediaError(f"{what}, not {names}")
    return found


def open_container(kind: str, data: bytes) -> tuple[Any, str]:
    """``data`` opened with the demuxer its magic bytes name, and the container's name."""
    import av

    name, demuxer = sniff(kind, data)
    try:
        return av.open(io.BytesIO(data), format=demuxer), name
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise MediaError(f"unreadable {name} header ({type(exc).__name__})") from None


def probe(kind: str, data: bytes, limits: Limits) -> Info:
    """The header of ``data`` checked against ``limits``: bytes, container, codec, size, duration."""
    container, name = _opened(kind, data, limits)
    with container:
        return _header(kind, container, name, limits)


def _opened(kind: str, data: bytes, limits: Limits) -> tuple[Any, str]:
    if not data:
        raise MediaError(f"empty {kind}")
    if len(data) > limits.max_bytes:
        raise MediaError(f"{len(data)} bytes exceed the limit of {limits.max_bytes} bytes")
    return open_container(kind, data)


def _header(kind: str, container: Any, name: str, limits: Limits) -> Info:
    streams = container.streams.video if kind == "video" else container.streams.audio
    if not streams:
        raise MediaError(f"the {name} file holds no {kind} stream (truncated, or no {kind} in it)")
    stream = streams[0]
    codec = str(stream.codec_context.name)
    allowed = VIDEO_CODECS if kind == "video" else AUDIO_CODECS
    if codec not in allowed and not (kind == "audio" and codec.startswith("pcm_")):
        raise MediaError(f"codec {codec} is not accepted; {kind} codecs: {', '.join(allowed)}")
    duration = _duration(container, stream)
    if duration > limits.max_seconds:
        raise MediaError(f"{duration:.1f} s exceed the limit of {limits.max_seconds:g} s")
    if kind == "video":
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if width <= 0 or height <= 0:
            raise MediaError(f"declares an empty frame size {width}x{height}")
        if width * height > limits.max_pixels:
            raise MediaError(f"{width}x{height} pixels per frame exceed the limit of {limits.max_pixels} pixels")
        return Info(kind, name, codec, duration, width=width, height=height)
    rate, channels = int(stream.codec_context.sample_rate), int(stream.codec_context.channels)
    if not 0 < rate <= 768_000 or not 0 < channels <= 64:
        raise MediaError(f"declares {rate} Hz and {channels} channels")
    return Info(kind, name, codec, duration, sample_rate=rate, channels=channels)


def _duration(container: Any, stream: Any) -> float:
    """Seconds the header declares (0: it does not say)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return 0.0


def verify(kind: str, data: bytes, limits: Limits) -> Info:
    """:func:`probe`, then every packet read (not decoded) and the first frame decoded:
    truncated, corrupt or undecodable data is refused. Returns the info with the duration
    the packets show where the header did not say."""
    import av

    container, name = _opened(kind, data, limits)
    with container:
        info = _header(kind, container, name, limits)
        stream = (container.streams.video if kind == "video" else container.streams.audio)[0]
        end, packets = 0.0, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_corrupt:
                    raise MediaError(f"corrupt or truncated {name} data (packet {packets})")
                packets += 1
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        except av.FFmpegError as exc:
            raise MediaError(f"corrupt {name} data ({type(exc).__name__})") from None
        if not packets:
            raise MediaError(f"the {name} file holds no {kind} data")
        declared = info.duration_s
        if declared and end < declared * (1 - END_SLACK_SHARE) - END_SLACK_S:
            raise MediaError(f"truncated: its data ends at {end:.1f} s of the {declared:.1f} s its header declares")
        if kind == "video" and stream.frames and packets < stream.frames:
            raise MediaError(f"truncated: {packets} of the {stream.frames} frames its header declares")
        if end > limits.max_seconds:
            raise MediaError(f"{end:.1f} s exceed the limit of {limits.max_seconds:g} s")
    _first_frame(kind, data, name)
    if not declared:
        return Info(**{**_fields(info), "duration_s": end})
    return info


def _first_frame(kind: str, data: bytes, name: str) -> None:
    import av

    container, _ = open_container(kind, data)
    with container:
        try:
            for _ in container.decode(**{kind: 0}):
                return
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"undecodable {name} data ({type(exc).__name__})") from None
    raise MediaError(f"no decodable {kind} frame in the {name} file")


def _fields(info: Info) -> dict[str, Any]:
    return {f: getattr(info, f) for f in Info.__slots__}


def segments_at_most(duration_s: float, step_s: float, length_s: float = 0.0) -> int:
    """Segments a clip of ``duration_s`` gives when one starts every ``step_s`` (each ``length_s``
    long: the last one starts before the clip's end less the overlap)."""
    if duration_s <= 0:
        return 1
    overlap = max(0.0, length_s - step_s)
    return max(1, math.ceil(max(duration_s - overlap, 1e-9) / step_s))
