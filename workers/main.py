"""A worker process from settings: load the registry's model, then serve its stream until SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path

from embedstream import hub, loadfailure, logs, registryfile, tracing
from embedstream import registry as registry_mod
from embedstream.connections import TRANSIENT, connect
from embedstream.errors import ConfigError
from embedstream.runner import run_async
from embedstream.settings import Settings

log = logging.getLogger("embedstream")

#: Packages transformers imports whenever they are installed (image processors, object-detection
#: losses, torch.compile's kernels) that only the image-text family uses: hidden from the other
#: families' workers, they cost those no memory (~110 MB and 550 modules for MiniLM).
IMAGE_STACKS = ("torchvision", "PIL", "timm", "open_clip", "scipy", "triton")
#: Likewise the audio and video decoders transformers' processors import when installed
#: (``transformers.audio_utils``): only the image-text and audio-text families decode clips.
MEDIA_STACKS = ("soxr", "soundfile", "torchaudio", "librosa", "av")
#: torch and what imports it, hidden from a worker whose model runs on the onnx engine.
TORCH_STACKS = ("torch", "sentence_transformers", "accelerate", "peft", "safetensors.torch")


def hide_image_stacks(stacks: tuple[str, ...] = IMAGE_STACKS) -> None:
    """Make ``stacks`` (the image stacks) look uninstalled to this process (a text-only worker)."""
    for name in stacks:
        # A None entry makes `import name` raise ImportError and find_spec() return None,
        # which is how transformers asks whether an optional package is there.
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def run(settings: Settings, model_name: str) -> int:
    """Load ``model_name`` (the registry's default when empty) and serve it; the ``worker`` command."""
    settings.require_redis()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    registry = registryfile.load(settings.registry)
    spec = registry.resolve(model_name)
    logs.set_model(spec.name)
    tracing.setup(settings, "worker")
    # Parallel tokenizing wins beside an accelerator; on CPU it steals the model's cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if spec.device == "cpu" else "true")
    from embedstream.workers import threads as thread_policy

    thread_policy.prepare_environment()  # before torch is imported
    if spec.family != "image-text":
        hide_image_stacks()
    if spec.family not in registry_mod.MODALITIES:  # a family that can take no video or audio at all
        hide_image_stacks(MEDIA_STACKS)
    threads = settings.torch_threads()
    try:
        if spec.path.startswith(registry_mod.HUB_SCHEME):
            # The snapshot in the cache (downloaded first only with HF_HUB_OFFLINE=0): every loader sees a folder.
            spec = dataclasses.replace(spec, path=hub.folder(spec.name, spec.path[len(registry_mod.HUB_SCHEME) :]))
        if spec.path and not Path(spec.path).exists():
            raise ConfigError(f"models.{spec.name}.path: {spec.path} does not exist on this machine")
        from embedstream.workers import onnxengine

        spec = onnxengine.resolve(spec, settings.onnx_cache)  # exports in a process of its own
        if spec.engine == "onnx":  # the graph needs no torch: ~500 MiB this worker never maps
            hide_image_stacks(TORCH_STACKS)
            os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found"
        from transformers.utils import logging as hf_logging

        from embedstream.workers.loader import load

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        if logs.json_lines():
            hf_logging.disable_default_handler()
            hf_logging.enable_propagation()
        policy = "" if settings.threads or spec.engine == "onnx" else " (adaptive: one fewer while others are busy)"
        source = spec.path or spec.family
        log.info(
            "loading model %s (%s) on %s, engine %s, with %d threads%s",
            *(spec.name, source, spec.device, spec.engine, threads, policy),
        )
        try:
            model = load(spec, threads, (settings.max_image_bytes, settings.max_image_pixels), settings.onnx_cache)
        except (OSError, ImportError, ValueError) as exc:
            # Missing or unreadable weights, a missing package, a folder that is not this family:
            # restarting cannot mend any of them, so they end the worker as configuration errors.
            raise ConfigError(f"model {spec.name}: cannot load {spec.path or spec.family}: {exc}") from exc
    except ConfigError as exc:
        run_async(_record_failure(settings, spec.name, str(exc)))
        raise
    from embedstream.workers.worker import serve

    run_async(serve(spec, model, settings))
    return 0


async def _record_failure(settings: Settings, model: str, reason: str) -> None:
    """Leave the reason in Redis for the gateway (ListModels, health, callers); best effort."""
    redis = connect(settings.redis_url, settings.redis_timeout_s)
    try:
        await loadfailure.record(redis, model, reason, f"{socket.gethostname()}-{os.getpid()}")
    except TRANSIENT as exc:
        log.warning("could not record the load failure of %s in Redis: %s", model, exc)
    finally:
        await redis.aclose()
