"""Video and audio through a real gateway and workers: segments by interval and by scene, audio windows of every
format, each equal to its reference model on the same frames or windows."""

from __future__ import annotations

import numpy as np
import pytest

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import media, mediaref
from tests.support.families import values
from tests.support.mediaserved import SCENES, TOL, Media, spans


def test_list_models_shows_what_each_model_takes(stub: pb_grpc.EmbedderStub) -> None:
    listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    caps = {
        name: (m.capabilities.text, m.capabilities.image, m.capabilities.video, m.capabilities.audio)
        for name, m in listed.items()
    }
    assert caps == {
        "clip": (True, True, True, False),
        "clap": (True, False, False, True),
        "words": (True, False, False, False),
    }
    assert listed["clap"].family == pb.MODEL_FAMILY_AUDIO_TEXT and listed["clap"].dimensions == 16


@pytest.mark.parametrize("fmt", ["mp4", "webm", "matroska"])
def test_video_segments_every_interval_equal_open_clip_on_the_same_frames(
    stub: pb_grpc.EmbedderStub, served: Media, fmt: str
) -> None:
    clip = media.video(SCENES, fmt=fmt)
    options = pb.MediaOptions(frame_interval_s=1.0, output=pb.MEDIA_OUTPUT_SEGMENTS_AND_POOLED)
    inputs = [pb.Input(text="a red scene"), pb.Input(video=clip)]
    resp = stub.Embed(pb.EmbedRequest(model="clip", inputs=inputs, media=options), timeout=60)
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    expected_spans = [(0, 0, 0.0, 0.0, False)]
    expected_spans += [(1, k, t, t + 1.0, False) for k, t in enumerate(times)] + [(1, 6, 0.0, 6.0, True)]
    assert spans(resp) == expected_spans
    frames = mediaref.open_clip_images(served.models["clip"], mediaref.frames_at(clip, times))
    text = mediaref.open_clip_texts(served.models["clip"], ["a red scene"])
    expected = np.concatenate([text, frames, mediaref.mean_of(frames)[None]])
    assert np.abs(values(resp) - expected).max() <= TOL
    assert [e.segment.frames for e in resp.embeddings] == [1] * 7 + [6]


def test_scene_segments_end_where_the_picture_cuts(stub: pb_grpc.EmbedderStub, served: Media) -> None:
    clip = media.video(SCENES)
    options = pb.MediaOptions(segments=pb.MEDIA_SEGMENTS_SCENES, frame_interval_s=1.0)
    resp = stub.Embed(pb.EmbedRequest(model="clip", inputs=[pb.Input(video=clip)], media=options), timeout=60)
    cuts = media.cuts(SCENES)  # [2.0, 3.5]
    bounds = [0.0, *cuts, sum(SCENES)]
    assert spans(resp) == [(0, k, bounds[k], bounds[k + 1], False) for k in range(3)]
    sampled = [[0.0, 1.0], [2.0, 3.0], [3.5, 4.5, 5.5]]  # each scene's first frame, then every second
    assert [e.segment.frames for e in resp.embeddings] == [2, 2, 3]
    vectors = [
        mediaref.mean_of(mediaref.open_clip_images(served.models["clip"], mediaref.frames_at(clip, t))) for t in sampled
    ]
    assert np.abs(values(resp) - np.stack(vectors)).max() <= TOL
    pooled = stub.Embed(
        pb.EmbedRequest(
            model="clip",
            inputs=[pb.Input(video=clip)],
            media=pb.MediaOptions(segments=pb.MEDIA_SEGMENTS_SCENES, output=pb.MEDIA_OUTPUT_POOLED),
        ),
        timeout=60,
    )
    assert spans(pooled) == [(0, 3, 0.0, 6.0, True)]


def test_audio_windows_equal_clap_on_the_same_windows(stub: pb_grpc.EmbedderStub, served: Media) -> None:
    rate = 48000
    samples = media.tones([(3.0, 440), (4.0, 880), (5.0, 660)], rate)
    clip = media.audio(samples, rate, "wav")
    inputs = [pb.Input(audio=clip), pb.Input(text="the dog")]
    options = pb.MediaOptions(output=pb.MEDIA_OUTPUT_SEGMENTS_AND_POOLED)  # the model's 10 s, overlap 2.5 s
    resp = stub.Embed(pb.EmbedRequest(model="clap", inputs=inputs, media=options), timeout=60)
    decoded = mediaref.decoded_mono(clip, rate)
    windows = mediaref.windows(decoded, rate, 10.0, 2.5)
    assert windows == [(0.0, 10.0), (7.5, 12.0)]
    expected_spans = [
        (0, 0, 0.0, 10.0, False),
        (0, 1, 7.5, 12.0, False),
        (0, 2, 0.0, 12.0, True),
        (1, 0, 0.0, 0.0, False),
    ]
    assert spans(resp) == expected_spans
    audio = mediaref.clap_audio(served.models["clap"], decoded, rate, windows)
    text = mediaref.clap_texts(served.models["clap"], ["the dog"])
    expected = np.concatenate([audio, mediaref.mean_of(audio)[None], text])
    assert np.abs(values(resp) - expected).max() <= 1e-4


@pytest.mark.parametrize(("fmt", "rate", "channels"), [("flac", 16000, 1), ("mp3", 44100, 2), ("ogg", 48000, 2)])
def test_audio_of_every_format_is_resampled_and_windowed_like_the_reference(
    stub: pb_grpc.EmbedderStub, served: Media, fmt: str, rate: int, channels: int
) -> None:
    samples = media.tone_samples(5.0, rate, 330.0, channels)
    clip = media.audio(samples, rate, fmt)
    options = pb.MediaOptions(window_s=2.0, overlap_s=0.5)
    resp = stub.Embed(pb.EmbedRequest(model="clap", inputs=[pb.Input(audio=clip)], media=options), timeout=60)
    decoded = mediaref.decoded_mono(clip, 48000)
    windows = mediaref.windows(decoded, 48000, 2.0, 0.5)
    assert [(s, e) for _, _, s, e, _ in spans(resp)] == [(round(s, 3), round(e, 3)) for s, e in windows]
    expected = mediaref.clap_audio(served.models["clap"], decoded, 48000, windows)
    assert np.abs(values(resp) - expected).max() <= 1e-4
