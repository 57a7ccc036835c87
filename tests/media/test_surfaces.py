"""Video and audio through every surface: jobs (a clip per entry), the Python client, embed-file's Parquet
table of segments, and HTTP's multimodal embeddings request."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from embedstream import keys
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import media, mediaref
from tests.support.families import values
from tests.support.mediaserved import SCENES, TOL, Media
from tests.support.processes import entries_added, wait_until


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
