"""Video and audio pieces without a service: the registry's modalities, the wire format's kinds, media
options and segments, the header checks, and how clips are cut into frames and windows."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest

from embedstream import framing, media, mediawire, registryfile, replywire, wire
from embedstream.errors import ConfigError
from embedstream.workers import frames, sound
from tests.support import media as clips

LIMITS = media.Limits(48 << 20, 7200, 3840 * 2160)


def test_the_registry_declares_what_each_model_takes() -> None:
    reg = registryfile.parse(
        {
            "models": {
                "clip": {"family": "image-text", "path": "/m/clip"},
                "stills": {"family": "image-text", "path": "/m/clip", "modalities": ["text", "image"]},
                "clap": {"family": "audio-text", "path": "/m/clap"},
                "minilm": {"family": "text-dense", "path": "/m/minilm"},
            }
        },
        Path("/"),
    )
    takes = {name: spec.takes for name, spec in reg.models.items()}
    assert takes == {
        "clip": ("text", "image", "video"),
        "stills": ("text", "image"),
        "clap": ("text", "audio"),
        "minilm": ("text",),
    }
    with pytest.raises(ConfigError, match=r"models.minilm.modalities must be a list of \['text'\]"):
        registryfile.parse(
            {"models": {"minilm": {"family": "text-dense", "path": "/m", "modalities": ["video"]}}}, Path("/")
        )


def test_entries_with_clips_carry_kinds_and_options_and_replies_their_segments() -> None:
    opts = mediawire.Media(frame_interval_s=0.5, scenes=True, scene_threshold=0.2, output="both")
    job = wire.Job("a", "r", 1, 1, ["text", b"video", b"audio"], kinds="tva", media=opts)
    back = wire.decode_job(wire.encode_job(job))
    assert (back.kinds, back.media) == ("tva", opts)
    # Media entries carry the newest version (a worker that knows only text operations refuses them),
    # also beside a text option (left truncation, version 3); their kinds never meet the text kind.
    left = wire.Job("a", "r", 1, 1, ["text", b"audio"], kinds="ta", truncation_side="left", cache="bypass")
    body = msgpack.unpackb(wire.encode_job(left))
    assert body["v"] == framing.VERSION_MEDIA == max(framing.VERSIONS) and body["mk"] == "ta" and "kd" not in body
    assert wire.decode_job(wire.encode_job(left)) == left
    with pytest.raises(wire.WireError):
        wire.decode_job(msgpack.packb({**body, "v": framing.VERSION_MEDIA + 1}))
    assert wire.decode_job(wire.encode_job(wire.Job("a", "r", 1, 1, ["x"]))).kinds == ""
    forged = wire.encode_job(wire.Job("a", "r", 1, 1, ["text", b"video"], kinds="vv"))
    with pytest.raises(wire.WireError, match="kinds do not match"):
        wire.decode_job(forged)
    segments = [mediawire.Segment(0, 0, 0.0, 1.5, frames=3), mediawire.Segment(0, 1, 0.0, 1.5, pooled=True)]
    reply = replywire.Reply("a", vectors=b"\0" * 16, dimensions=2, count=2, segments=mediawire.flatten(segments))
    assert mediawire.unflatten(replywire.decode_reply(replywire.encode_reply(reply)).segments or []) == segments
    with pytest.raises(wire.WireError, match="segments do not match count"):
        replywire.decode_reply(
            replywire.encode_reply(replywire.Reply("a", vectors=b"\0" * 8, dimensions=2, count=1, segments=[0] * 12))
        )


def test_headers_are_checked_before_any_decoding() -> None:
    info = media.verify("video", clips.video((1.0, 1.0)), LIMITS)
    assert (info.container, info.codec, info.width, info.height, round(info.duration_s, 2)) == (
        "MP4",
        "h264",
        64,
        48,
        2.0,
    )
    with pytest.raises(media.MediaError, match="128 bytes exceed the limit of 100 bytes"):
        media.probe("audio", b"RIFF" + b"\0" * 124, media.Limits(100, 10))
    with pytest.raises(media.MediaError, match="64x48 pixels per frame exceed the limit of 1000"):
        media.probe("video", clips.video((1.0,)), media.Limits(1 << 20, 10, 1000))
    with pytest.raises(media.MediaError, match=r"2\.0 s exceed the limit of 1 s"):
        media.probe("video", clips.video((1.0, 1.0), fmt="webm"), media.Limits(1 << 20, 1, 10**6))


def test_windows_start_every_hop_and_the_last_only_where_it_adds_audio() -> None:
    rate = 1000

    def spans(seconds: float, window: float, overlap: float) -> list[tuple[float, float]]:
        data = clips.audio(np.zeros(round(seconds * rate), np.float32), rate, "wav")
        return sound.windows(data, LIMITS, rate, window, overlap, len, 100).spans

    assert spans(3.0, 10.0, 2.5) == [(0.0, 3.0)]  # shorter than a window: one, as long as the clip
    assert spans(10.0, 4.0, 1.0) == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    assert spans(10.5, 4.0, 1.0) == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0), (9.0, 10.5)]
    assert spans(7.0, 4.0, 1.0) == [(0.0, 4.0), (3.0, 7.0)]  # 6..7 adds nothing the window before had not
    with pytest.raises(media.MediaError, match="more than 2 windows to embed"):
        sound.windows(clips.audio(np.zeros(10 * rate, np.float32), rate), LIMITS, rate, 4.0, 1.0, len, 2)


def test_frames_are_sampled_per_interval_or_per_scene_within_the_frame_limit() -> None:
    video = clips.video((2.0, 1.5, 2.5))
    every = frames.sample(video, LIMITS, lambda image: image.size, 1.5, False, 0.15, 100)
    assert [round(t, 2) for t in every.times] == [0.0, 1.5, 3.0, 4.5]
    assert [(round(s, 2), round(e, 2), rows) for s, e, rows in every.segments] == [
        (0.0, 1.5, [0]),
        (1.5, 3.0, [1]),
        (3.0, 4.5, [2]),
        (4.5, 6.0, [3]),
    ]
    scenes = frames.sample(video, LIMITS, lambda image: image.size, 10.0, True, 0.15, 100)
    assert [(round(s, 2), round(e, 2), rows) for s, e, rows in scenes.segments] == [
        (0.0, 2.0, [0]),
        (2.0, 3.5, [1]),
        (3.5, 6.0, [2]),
    ]
    assert scenes.frames[0] == (64, 48)
    with pytest.raises(media.MediaError, match="more than 5 frames to embed"):
        frames.sample(video, LIMITS, lambda image: image.size, 1.0, False, 0.15, 5)
