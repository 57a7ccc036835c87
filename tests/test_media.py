"""Video and audio through the service: segments where the picture cuts, vectors equal to the reference
models on the same frames and windows, hostile clips refused at the gateway, nothing queued for them.

One gateway serves a tiny open_clip model (image-text: text, image, video), a tiny CLAP (audio-text:
text, audio) and a debug model (text only); media is generated on the spot (tests/support/media.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from embedstream import keys, mediawire, wire
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import media, mediaref, tinymodels
from tests.support.processes import (
    Proc,
    base_env,
    entries_added,
    read_replies,
    start_gateway,
    start_workers,
    wait_until,
)

SCENES = (2.0, 1.5, 2.5)
TOL = 1e-5


@dataclass
class Media:
    port: int
    models: dict[str, Path]
    workers: dict[str, Proc]
    gateway: Proc


@pytest.fixture(scope="module")
def served(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Media]:
    root = tmp_path_factory.mktemp("media-models")
    models = {"clip": tinymodels.open_clip_model(root / "clip"), "clap": tinymodels.clap_model(root / "clap")}
    registry = root / "models.toml"
    registry.write_text(
        f"""
default = "clip"
[models.clip]
family = "image-text"
path = "{models["clip"]}"
[models.clap]
family = "audio-text"
path = "{models["clap"]}"
[models.words]
family = "debug"
dimensions = 8
"""
    )
    logs = tmp_path_factory.mktemp("media-logs")
    env = base_env(redis_server.url, registry, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_MAX_MEDIA_FRAMES="64")
    gateway, port = start_gateway(env, logs)
    try:
        workers = start_workers(env, logs, ["clip", "clap", "words"], r)
    except BaseException:
        gateway.kill()
        raise
    yield Media(port, models, workers, gateway)
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="module")
def stub(served: Media) -> Iterator[pb_grpc.EmbedderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        s = pb_grpc.EmbedderStub(channel)
        wait_until(lambda: all(m.serving for m in s.ListModels(pb.ListModelsRequest()).models), 10, what="serving")
        yield s


def values(resp: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)


def spans(resp: pb.EmbedResponse) -> list[tuple[int, int, float, float, bool]]:
    """Each Embedding's segment, times to the millisecond."""
    return [
        (e.segment.input, e.segment.index, round(e.segment.start_s, 3), round(e.segment.end_s, 3), e.segment.pooled)
        for e in resp.embeddings
    ]


def refused(stub: pb_grpc.EmbedderStub, request: pb.EmbedRequest) -> tuple[grpc.StatusCode, str, float]:
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request, timeout=30)
    return err.value.code(), err.value.details(), time.perf_counter() - started


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


def test_jobs_carry_clips_one_per_entry_and_return_their_segments(
    stub: pb_grpc.EmbedderStub, served: Media, r: redis.Redis
) -> None:
    from embedstream.v1 import jobs_pb2 as jpb
    from embedstream.v1 import jobs_pb2_grpc as jpb_grpc

    clips = [media.video(SCENES), media.video((1.0, 2.0), fmt="webm")]
    items = [pb.Input(video=clips[0]), pb.Input(text="a blue scene"), pb.Input(video=clips[1])]
    options = pb.MediaOptions(segments=pb.MEDIA_SEGMENTS_SCENES, output=pb.MEDIA_OUTPUT_SEGMENTS_AND_POOLED)
    packed = pb.VECTOR_ENCODING_PACKED_F32LE
    direct = [
        stub.Embed(pb.EmbedRequest(model="clip", inputs=[item], media=options, encoding=packed), timeout=60)
        for item in items
    ]
    before = entries_added(r, "clip", keys.bulk)
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        jobs = jpb_grpc.JobsStub(channel)
        job = jobs.SubmitJob(jpb.SubmitJobRequest(spec=jpb.JobSpec(model="clip", media=options), inputs=items))
        wait_until(lambda: jobs.GetJob(jpb.GetJobRequest(id=job.id)).state == jpb.JOB_STATE_SUCCEEDED, 60, what="job")
        results = list(jobs.GetJobResults(jpb.GetJobResultsRequest(id=job.id, encoding=packed), timeout=30))
        assert entries_added(r, "clip", keys.bulk) - before == 3  # one entry per input of a job holding clips
        assert [res.index for res in results] == [0, 1, 2]
        for index, (res, want) in enumerate(zip(results, direct)):
            if index == 1:  # a text of a job holding clips is an ordinary result
                assert not res.chunks and res.embedding.packed == want.embeddings[0].packed
                continue
            assert [(e.segment.input, e.segment.index, e.segment.pooled) for e in res.chunks] == [
                (index, e.segment.index, e.segment.pooled) for e in want.embeddings
            ]
            got = np.stack([np.frombuffer(e.packed, "<f4") for e in res.chunks])
            assert np.abs(got - np.stack([np.frombuffer(e.packed, "<f4") for e in want.embeddings])).max() <= TOL
        assert len(results[0].chunks) == 4 and len(results[2].chunks) == 3  # 3 scenes + pooled, 2 + pooled
        # An upload whose header set no media sends entries of 64 inputs: too large for clips.
        upload = iter(
            [
                jpb.UploadJobRequest(header=jpb.JobSpec(model="clip")),
                jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=[pb.Input(text="x"), pb.Input(video=clips[0])])),
            ]
        )
        with pytest.raises(grpc.RpcError) as err:
            jobs.UploadJob(upload, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("inputs[1].video: a job with video or audio sets media in its header")


def test_the_client_takes_paths_bytes_and_numpy_and_uploads_jobs(served: Media, tmp_path: Path) -> None:
    from embedstream.client import Client, MediaEmbedding, Sampling

    rate = 48000
    samples = media.tones([(2.0, 440), (2.0, 660)], rate)
    clip = media.video(SCENES)
    (tmp_path / "clip.mp4").write_bytes(clip)
    frames = np.stack([media.scene(media.COLORS[k], k, (64, 48)) for k in (0, 0, 1, 1) for _ in range(10)])
    with Client(f"127.0.0.1:{served.port}", model="clip") as client:
        by_path, by_bytes, by_array = client.embed_media(
            [tmp_path / "clip.mp4", clip, frames], rate=10, sampling=Sampling(scenes=True, output="both")
        )
        assert np.array_equal(by_path.vectors, by_bytes.vectors) and by_path.pooled is not None
        assert list(by_path.start_s) == pytest.approx([0.0, 2.0, 3.5], abs=2e-3)
        assert len(by_array) == 2 and by_array.duration_s == pytest.approx(4.0, abs=2e-3)  # 40 frames at 10/s
        (sound,) = client.embed_media([samples], kind="audio", model="clap", rate=rate, sampling=Sampling(window_s=2))
        windows = mediaref.windows(samples, rate, 2.0, 0.5)
        expected = mediaref.clap_audio(served.models["clap"], samples, rate, windows)  # a float WAV: exact samples
        assert np.abs(sound.vectors - expected).max() <= 1e-4
        assert np.allclose(np.column_stack([sound.start_s, sound.end_s]), windows, atol=1e-4)
        handle = client.upload_media_job([clip, tmp_path / "clip.mp4"], sampling=Sampling(scenes=True))
        handle.wait(timeout=60)
        results = list(handle.results())
    assert [i for i, _ in results] == [0, 1]
    for _, got in results:
        assert isinstance(got, MediaEmbedding) and np.abs(got.vectors - by_path.vectors).max() <= TOL


def test_embed_file_writes_a_folder_of_clips_as_a_parquet_table_of_segments(served: Media, tmp_path: Path) -> None:
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from tests.support import ROOT

    folder = tmp_path / "clips"
    (folder / "b").mkdir(parents=True)
    (folder / "a.mp4").write_bytes(media.video(SCENES))
    (folder / "b" / "c.webm").write_bytes(media.video((1.0, 1.0), fmt="webm"))
    (folder / "notes.txt").write_text("not a clip")
    (folder / "b" / "broken.mkv").write_bytes(media.random_bytes(2000))
    out = tmp_path / "segments.parquet"
    base = [sys.executable, "-m", "embedstream", "embed-file", str(folder), "-o", str(out), "--model", "clip"]
    for extra in ([], ["--job"], ["--job"]):
        done = subprocess.run(
            [*base, "--scenes", "--target", f"127.0.0.1:{served.port}", "--no-progress", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if extra and (folder / "b" / "broken.mkv").exists():
            # A job is refused whole at the gateway: the file is named, nothing is written.
            assert done.returncode == 2 and "b/broken.mkv: INVALID_ARGUMENT: inputs[1].video:" in done.stderr
            (folder / "b" / "broken.mkv").unlink()
            continue
        assert done.returncode == (0 if extra else 1), done.stderr  # without --job: reported, the rest written
        assert extra or "b/broken.mkv: INVALID_ARGUMENT: inputs[0].video: data of an unknown format" in done.stderr
        assert "wrote 7 segments of 2 files" in done.stderr
        table = pq.read_table(out).to_pydict()
        assert table["file"] == ["a.mp4"] * 4 + ["b/c.webm"] * 3
        assert table["segment"] == [0, 1, 2, 3, 0, 1, 2]
        assert table["pooled"] == [False] * 3 + [True] + [False] * 2 + [True]
        assert [round(s, 2) for s in table["start"]] == [0.0, 2.0, 3.5, 0.0, 0.0, 1.0, 0.0]
        assert [round(e, 2) for e in table["end"]] == [2.0, 3.5, 6.0, 6.0, 1.0, 2.0, 2.0]
        assert all(len(v) == 32 for v in table["vector"])


def test_http_takes_the_multimodal_form_of_the_embeddings_request(stub: pb_grpc.EmbedderStub, served: Media) -> None:
    import base64
    import json
    import re
    import urllib.error
    import urllib.request

    http_port = re.findall(r"serving HTTP on 127\.0\.0\.1:(\d+)", served.gateway.log())[0]

    def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/embeddings",
            json.dumps(body).encode(),
            {"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    clip = media.video(SCENES)
    options = {"segments": "MEDIA_SEGMENTS_SCENES", "output": "MEDIA_OUTPUT_SEGMENTS_AND_POOLED"}
    status, body = post(
        {
            "model": "clip",
            "input": [{"text": "a red scene"}, {"video": base64.b64encode(clip).decode()}],
            "media": options,
        }
    )
    assert status == 200, body
    data = body["data"]
    assert isinstance(data, list) and len(data) == 5
    assert [(d["segment"]["input"], d["segment"]["index"], d["segment"]["pooled"]) for d in data] == [
        (0, 0, False),
        (1, 0, False),
        (1, 1, False),
        (1, 2, False),
        (1, 3, True),
    ]
    assert [round(d["segment"]["start_s"], 2) for d in data[1:4]] == [0.0, 2.0, 3.5]
    grpc_options = pb.MediaOptions(segments=pb.MEDIA_SEGMENTS_SCENES, output=pb.MEDIA_OUTPUT_SEGMENTS_AND_POOLED)
    inputs = [pb.Input(text="a red scene"), pb.Input(video=clip)]
    direct = values(stub.Embed(pb.EmbedRequest(model="clip", inputs=inputs, media=grpc_options), timeout=60))
    assert np.abs(np.array([d["embedding"] for d in data], dtype=np.float32) - direct).max() <= TOL
    for item, param, needle in (
        ({"video": "not base64!"}, "input[0].video", "not valid base64"),
        ({"video": base64.b64encode(media.random_bytes()).decode()}, "input[0].video", "unknown format"),
        ({"audio": base64.b64encode(clip).decode()}, "input[0].audio", "takes text, image, video"),
        ({"film": "x"}, "input[0]", "an object with one of text, image, video, audio"),
    ):
        status, body = post({"model": "clip", "input": [item]})
        error = body["error"]
        assert status == 400 and isinstance(error, dict), body
        assert error["param"] == param and needle in str(error["message"]), error
