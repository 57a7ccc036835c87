"""`make bench-gpu`: MiniLM and a tiny CLIP, raw vs through the service, in one run.

Sized to finish in under 5 minutes on one GPU (and to run, smaller, on a CPU):
  minilm   texts/s in-process (the worker's loader, threads and batch policy)
           and through EmbedStream, and their ratio
  clip     images/s in-process (decode + preprocess + image tower, as the worker
           does it) and through EmbedStream (16 encoded images per request),
           and texts/s through the same model's text tower
The tiny CLIP is built on the spot (open_clip when installed, else a
transformers SigLIP): it measures the service's image path, not a real CLIP.
Compare ratios; absolute numbers drift on shared machines.

    python loadtest/gpu_bench.py --device cuda:0 --dtype float16
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


from embedstream import registry, registryfile  # noqa: E402
from loadtest.corpus import mixed_texts  # noqa: E402
from loadtest.measure import Figures, device_options, raw_throughput, save, serving, stream_throughput  # noqa: E402


def photos(n: int) -> list[bytes]:
    """``n`` distinct 640x480 JPEGs (decode cost is part of the image path)."""
    from tests.support.images import picture

    return [picture(k, (640, 480), "JPEG", quality=85) for k in range(n)]


def raw_images(spec: registry.ModelSpec, threads: int, images: list[bytes]) -> float:
    """Images/s of decode + preprocess + image tower in this process, in the worker's batch size."""
    from embedstream.workers.loader import load

    model = load(spec, threads)
    warm = model.tokenize(images[:4])
    model.forward(warm, [True] * len(warm))
    started = time.perf_counter()
    size = spec.max_batch_size
    for k in range(0, len(images), size):
        batch = model.tokenize(images[k : k + size])
        model.forward(batch, [True] * len(batch))
    return len(images) / (time.perf_counter() - started)


def tiny_clip(folder: Path) -> tuple[Path, str]:
    """A tiny image-text model folder and its backend: open_clip if installed, else SigLIP."""
    from tests.support import tinymodels

    if importlib.util.find_spec("open_clip") is not None:
        return tinymodels.open_clip_model(folder), "open_clip"
    return tinymodels.siglip_model(folder), "transformers"


def main() -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--texts", type=int, default=0, help="MiniLM corpus (default: 20000 on GPU, 2000 on CPU)")
        parser.add_argument("--images", type=int, default=0, help="images (default: 4000 on GPU, 400 on CPU)")
        parser.add_argument("--model-path", default="", help="MiniLM folder (default: the package's)")

    args = device_options(__doc__ or "", options)

    from embedstream.settings import Settings

    gpu = args.device.startswith("cuda")
    threads = args.threads or Settings.from_env({}).torch_threads()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if gpu else "false")
    texts = mixed_texts(args.texts or (20_000 if gpu else 2000))
    images = photos(args.images or (4000 if gpu else 400))
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-gpu-bench-"))
    clip_dir, backend = tiny_clip(workdir / "clip")
    minilm = str(Path(args.model_path).resolve()) if args.model_path else registry.builtin().resolve("").path
    registry_path = workdir / "models.toml"
    registry_path.write_text(
        f'[models.minilm]\nfamily = "text-dense"\npath = "{minilm}"\ndevice = "{args.device}"\ndtype = "{args.dtype}"\n'
        f'[models.clip]\nfamily = "image-text"\npath = "{clip_dir}"\nbackend = "{backend}"\n'
        f'device = "{args.device}"\ndtype = "{args.dtype}"\n'
    )
    reg = registryfile.load(str(registry_path))
    device = args.device
    if gpu:
        import torch

        device = f"{args.device} ({torch.cuda.get_device_name(int(args.device.partition(':')[2] or 0))})"
    results = Figures(
        28, device=device, dtype=args.dtype, threads=threads, clip=f"tiny {backend} (32x32 pixels, 2+2 layers)"
    )
    say = results.say

    print(f"embedstream gpu bench: {len(texts)} texts, {len(images)} JPEGs (640x480) on {device}")
    say("minilm_raw_texts_per_s", raw_throughput(reg.resolve("minilm"), threads, texts), "texts/s in-process")
    say("clip_raw_images_per_s", raw_images(reg.resolve("clip"), threads, images), "images/s in-process")
    with serving(workdir, registry_path, ["minilm", "clip"], threads) as service:
        stream_throughput(service.port, "minilm", texts[:200])
        say("minilm_stream_texts_per_s", stream_throughput(service.port, "minilm", texts), "texts/s EmbedStream")
        say("minilm_stream_vs_raw", results["minilm_stream_texts_per_s"] / results["minilm_raw_texts_per_s"], "x")  # type: ignore[operator]
        stream_throughput(service.port, "clip", images[:32])
        say("clip_stream_images_per_s", stream_throughput(service.port, "clip", images), "images/s EmbedStream")
        say("clip_stream_vs_raw", results["clip_stream_images_per_s"] / results["clip_raw_images_per_s"], "x")  # type: ignore[operator]
        say("clip_stream_texts_per_s", stream_throughput(service.port, "clip", texts), "texts/s EmbedStream")
    return save(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
