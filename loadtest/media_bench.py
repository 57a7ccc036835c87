"""`make bench-gpu` (second part): video frames/s and audio seconds/s, raw vs through the service.

  video  frames/s in-process (the worker's own decode, sampling, preprocessing and image
         tower: workers/media.py on a tiny open_clip) and through Embed calls (one clip
         each, ``--callers`` at once), and their ratio
  audio  seconds of audio/s the same two ways (decode, resample to 48 kHz, 10 s windows,
         log-mel features, a tiny CLAP's audio tower)
Clips are encoded on the spot: H.264 MP4 of changing colour scenes, FLAC tones at 44.1 kHz
(so resampling is measured). The models are tiny: this measures the service's media path
around a model, not a real CLIP or CLAP. Compare ratios; absolute numbers drift.

    python loadtest/media_bench.py --device cuda:0 --dtype float16
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedstream import media, mediawire, registry, registryfile, wire  # noqa: E402
from loadtest.measure import Figures, device_options, save, serving  # noqa: E402


def clips(n: int, seconds: float, size: tuple[int, int]) -> list[bytes]:
    """``n`` distinct videos of ``seconds`` each, a scene cut every 2 s."""
    from tests.support import media as make

    scenes = [2.0] * max(1, round(seconds / 2))
    return [make.video(scenes[k % 2 :] + scenes[: k % 2], fps=24, size=size) for k in range(n)]


def tones(n: int, seconds: float) -> list[bytes]:
    """``n`` FLAC files of ``seconds`` of stereo tones at 44.1 kHz."""
    from tests.support import media as make

    return [make.audio(make.tone_samples(seconds, 44100, 220.0 * (1 + k % 5), 2), 44100, "flac") for k in range(n)]


def raw(spec: registry.ModelSpec, threads: int, data: list[bytes], kind: str, opts: mediawire.Media) -> float:
    """Frames (video) or windows (audio) per second in this process, as a worker runs them."""
    from embedstream.settings import Settings
    from embedstream.workers import media as worker_media
    from embedstream.workers.loader import load

    model = load(spec, threads)
    budget = worker_media.Budget.of(Settings.from_env({}))

    def one(clip: bytes) -> int:
        job = wire.Job("b", "", 0, 0, [clip], kinds=kind, media=opts)
        tokens, layout, error = worker_media.prepare(model, job, job.inputs, budget)
        assert error is None and layout is not None, error
        outputs = [
            row
            for k in range(0, len(tokens), spec.max_batch_size)
            for row in model.forward(
                tokens[k : k + spec.max_batch_size], [True] * len(tokens[k : k + spec.max_batch_size])
            )
        ]
        worker_media.pool(outputs, layout, 0, True)
        return len(tokens)

    one(data[0])
    started = time.perf_counter()
    units = sum(one(clip) for clip in data)
    return units / (time.perf_counter() - started)


def served(port: int, model: str, data: list[bytes], kind: str, opts: mediawire.Media, callers: int) -> float:
    """Frames (video) or windows (audio) per second through Embed, ``callers`` clips in flight."""
    from embedstream.client import Client, Sampling

    sampling = Sampling(frame_interval_s=opts.frame_interval_s, window_s=opts.window_s, output=opts.output)
    with Client(f"127.0.0.1:{port}", model=model, timeout=600) as client:
        client.embed_media(data[:1], kind=kind, sampling=sampling)
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(callers) as pool:
            done = list(pool.map(lambda c: client.embed_media([c], kind=kind, sampling=sampling)[0], data))
        elapsed = time.perf_counter() - started
    return sum(int(d.frames.sum()) for d in done) / elapsed


def main() -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--videos", type=int, default=0, help="clips (default: 48 on GPU, 6 on CPU)")
        parser.add_argument("--video-seconds", type=float, default=0, help="seconds per clip (default: 20 GPU, 8 CPU)")
        parser.add_argument("--audios", type=int, default=0, help="audio files (default: 48 on GPU, 4 on CPU)")
        parser.add_argument("--audio-seconds", type=float, default=0, help="seconds per file (default: 60 GPU, 25 CPU)")
        parser.add_argument("--frame-interval", type=float, default=0.25, help="seconds between sampled frames")
        parser.add_argument("--callers", type=int, default=4, help="clips in flight through the service")

    args = device_options(__doc__ or "", options)

    from embedstream.settings import Settings
    from tests.support import tinymodels

    gpu = args.device.startswith("cuda")
    threads = args.threads or Settings.from_env({}).torch_threads()
    videos = clips(args.videos or (48 if gpu else 6), args.video_seconds or (20 if gpu else 8), (320, 240))
    audio_seconds = args.audio_seconds or (60 if gpu else 25)
    audios = tones(args.audios or (48 if gpu else 4), audio_seconds)
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-media-bench-"))
    models = {"clip": tinymodels.open_clip_model(workdir / "clip"), "clap": tinymodels.clap_model(workdir / "clap")}
    registry_path = workdir / "models.toml"
    registry_path.write_text(
        "".join(
            f'[models.{name}]\nfamily = "{family}"\npath = "{models[name]}"\n'
            f'device = "{args.device}"\ndtype = "{args.dtype}"\n'
            for name, family in (("clip", "image-text"), ("clap", "audio-text"))
        )
    )
    reg = registryfile.load(str(registry_path))
    video_opts = mediawire.Media(frame_interval_s=args.frame_interval, output="both")
    audio_opts = mediawire.Media(output="both")
    windows_per_clip = media.segments_at_most(audio_seconds, 7.5, 10.0)
    results = Figures(
        32,
        device=args.device,
        dtype=args.dtype,
        threads=threads,
        video=f"{len(videos)} H.264 clips, 320x240 at 24 fps, a frame every {args.frame_interval} s",
        audio=f"{len(audios)} FLAC files of {audio_seconds:g} s, 44.1 kHz stereo -> 48 kHz, 10 s windows",
    )
    say = results.say

    print(f"embedstream media bench on {args.device}: {results['video']}; {results['audio']}")
    say("video_raw_frames_per_s", raw(reg.resolve("clip"), threads, videos, "v", video_opts), "frames/s in-process")
    raw_windows = raw(reg.resolve("clap"), threads, audios, "a", audio_opts)
    say("audio_raw_seconds_per_s", raw_windows * audio_seconds / windows_per_clip, "audio s/s in-process")
    with serving(workdir, registry_path, ["clip", "clap"], threads) as service:
        frames = served(service.port, "clip", videos, "video", video_opts, args.callers)
        say("video_service_frames_per_s", frames, "frames/s through Embed")
        say("video_service_vs_raw", frames / float(results["video_raw_frames_per_s"]), "x")
        windows = served(service.port, "clap", audios, "audio", audio_opts, args.callers)
        say("audio_service_seconds_per_s", windows * audio_seconds / windows_per_clip, "audio s/s through Embed")
        say("audio_service_vs_raw", windows / raw_windows, "x")
    return save(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
