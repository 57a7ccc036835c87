"""Video and audio refused: a kind the model does not take, hostile clips at the gateway, too many frames and
bad options naming the option, and a worker that survives hostile clips that skip the gateway."""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from embedstream import keys, mediawire, wire
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import media
from tests.support.mediaserved import SCENES, Media, refused
from tests.support.processes import entries_added, read_replies


def test_a_kind_a_model_does_not_take_is_refused_naming_what_it_takes(
    stub: pb_grpc.EmbedderStub, r: redis.Redis
) -> None:
    before = {m: entries_added(r, m) for m in ("clip", "clap", "words")}
    cases = [
        (
            "clap",
            pb.Input(video=media.video()),
            "inputs[0].video: model 'clap' is a audio-text model and takes text, audio",
        ),
        ("clip", pb.Input(audio=media.audio(media.tone_samples(1, 16000), 16000)), "takes text, image, video"),
        ("words", pb.Input(video=media.video()), "inputs[0].video: model 'words' is a debug model and takes text only"),
        ("clap", pb.Input(image=b"\xff\xd8\xff"), "inputs[0].image: model 'clap' is a audio-text model"),
    ]
    for model, item, needle in cases:
        code, details, _ = refused(stub, pb.EmbedRequest(model=model, inputs=[item]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, details
    assert {m: entries_added(r, m) for m in before} == before


def test_hostile_clips_are_refused_at_the_gateway_in_milliseconds(stub: pb_grpc.EmbedderStub, r: redis.Redis) -> None:
    before = {m: entries_added(r, m) for m in ("clip", "clap")}
    tone = media.audio(media.tone_samples(3.0, 16000), 16000, "flac")
    cases = [
        ("clip", "video", media.big_frame(), "7680x4320 pixels per frame exceed the limit of 8294400 pixels"),
        ("clip", "video", media.long_header(10.0), "36001.0 s exceed the limit of 7200 s"),
        ("clip", "video", media.truncated(media.video(fmt="webm")), "truncated: its data ends at"),
        ("clip", "video", media.truncated(media.video(fmt="mp4")), "MP4 file holds no video stream"),
        ("clip", "video", media.random_bytes(), "data of an unknown format, not MP4, WebM or MKV"),
        ("clip", "video", b"", "empty video"),
        ("clap", "audio", media.truncated(tone), "truncated: its data ends at"),
        ("clap", "audio", media.random_bytes(), "data of an unknown format, not WAV, FLAC, MP3 or OGG"),
        ("clap", "audio", media.video(), "MP4 data, not WAV, FLAC, MP3 or OGG"),
    ]
    for model, kind, data, needle in cases:
        item = pb.Input(video=data) if kind == "video" else pb.Input(audio=data)
        code, details, seconds = refused(stub, pb.EmbedRequest(model=model, inputs=[pb.Input(text="ok"), item]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"inputs[1].{kind}: ") and needle in details, details
        assert seconds < 1.0, (needle, seconds)
    assert {m: entries_added(r, m) for m in before} == before


def test_too_many_frames_and_bad_options_are_refused_naming_the_option(stub: pb_grpc.EmbedderStub) -> None:
    clip = media.video(SCENES)
    cases = [
        (
            pb.MediaOptions(frame_interval_s=0.05),
            "clip",
            "inputs[0].video: 6 s make up to 121 frames at media.frame_interval_s 0.05, over the limit of 64",
        ),
        (pb.MediaOptions(frame_interval_s=0.001), "clip", "media.frame_interval_s: at least 0.04 s"),
        (pb.MediaOptions(scene_threshold=2), "clip", "media.scene_threshold: a mean frame difference between 0 and 1"),
        (pb.MediaOptions(window_s=90), "clap", "media.window_s: between 0.1 and 60 s"),
        (
            pb.MediaOptions(window_s=2, overlap_s=2),
            "clap",
            "media.overlap_s: at least 0 and less than the window (2 s)",
        ),
        (pb.MediaOptions(segments=pb.MEDIA_SEGMENTS_SCENES), "clap", "media.segments: scenes are cut in video"),
        (pb.MediaOptions(output=7), "clip", "media.output: unknown value 7"),
    ]
    for options, model, needle in cases:
        item = pb.Input(video=clip) if model == "clip" else pb.Input(text="a tone")
        code, details, _ = refused(stub, pb.EmbedRequest(model=model, inputs=[item], media=options))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, details
    # A window longer than the model hears whole is refused by the worker, which knows the model.
    tone = media.audio(media.tone_samples(1.0, 48000), 48000)
    code, details, _ = refused(
        stub, pb.EmbedRequest(model="clap", inputs=[pb.Input(audio=tone)], media=pb.MediaOptions(window_s=20))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "media.window_s 20 exceeds the 10 s model clap hears" in details


def test_the_worker_survives_hostile_clips_that_skip_the_gateway(
    stub: pb_grpc.EmbedderStub, served: Media, r: redis.Redis
) -> None:
    replies = "test-hostile-media-replies"
    r.xadd(replies, {"x": "start"})
    hostile = {
        "bomb": media.big_frame(),
        "long": media.long_header(),
        "junk": media.random_bytes(),
        "cut": media.truncated(media.video(fmt="webm")),
    }
    now = int(time.time() * 1000)
    for name, data in hostile.items():
        job = wire.Job(name, replies, now + 60_000, now, ["fine", data], kinds="tv")
        r.xadd(keys.queue("clip"), {keys.PAYLOAD: wire.encode_job(job)})
    answers = read_replies(r, replies, len(hostile))
    assert set(answers) == set(hostile)
    # A truncated clip that skipped the gateway is embedded as far as it decodes: no crash, no bomb.
    cut = answers.pop("cut")
    assert cut.ok and max(s.end_s for s in mediawire.unflatten(cut.segments or [])) < sum(SCENES)
    for name, reply in answers.items():
        assert reply.error_code == "INVALID_ARGUMENT" and reply.error_message.startswith("inputs[1].video: "), name
    assert "7680x4320 pixels" in answers["bomb"].error_message and "36001.0 s exceed" in answers["long"].error_message
    assert served.workers["clip"].alive()
    ok = stub.Embed(pb.EmbedRequest(model="clip", inputs=[pb.Input(video=media.video((1.0,)))]), timeout=60)
    assert len(ok.embeddings) == 1 and ok.embeddings[0].segment.end_s == pytest.approx(1.0, abs=2e-3)
