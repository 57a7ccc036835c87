"""The reference side of the media tests: frames and windows found here, without the service's code,
and embedded by the reference libraries (open_clip, transformers ClapModel)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch


def frames_at(data: bytes, times: list[float]) -> list[Any]:
    """The RGB frames shown at ``times``: for each, the first decoded frame at or after it."""
    out: list[Any] = []
    with av.open(io.BytesIO(data)) as container:
        wanted = iter(times)
        target = next(wanted, None)
        for frame in container.decode(video=0):
            while target is not None and float(frame.time) + 1e-3 >= target:
                out.append(frame.to_image())
                target = next(wanted, None)
    assert len(out) == len(times), f"{len(out)} frames found for {len(times)} times"
    return out


def open_clip_images(folder: Path, images: list[Any]) -> np.ndarray:
    """open_clip's ``encode_image(preprocess(image), normalize=True)`` of each image."""
    import open_clip  # type: ignore[import-untyped]

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        return model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True).numpy()


def open_clip_texts(folder: Path, texts: list[str]) -> np.ndarray:
    """open_clip's ``encode_text(tokenizer(texts), normalize=True)``."""
    import open_clip

    name = f"local-dir:{folder}"
    model, _, _ = open_clip.create_model_and_transforms(name)
    model.eval()
    with torch.no_grad():
        return model.encode_text(open_clip.get_tokenizer(name)(texts), normalize=True).numpy()


def mean_of(rows: np.ndarray) -> np.ndarray:
    """The normalized mean of normalized rows: a segment's or a clip's pooled vector."""
    mean = rows.mean(axis=0)
    return mean / np.linalg.norm(mean)


def decoded_mono(data: bytes, rate: int) -> np.ndarray:
    """The whole clip decoded by PyAV, channels averaged, resampled in one call (soxr, HQ) to ``rate``."""
    import soxr

    parts, source_rate = [], 0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            resampled = av.AudioResampler(format="dblp", layout=frame.layout.name, rate=frame.sample_rate)
            for out in resampled.resample(frame):
                parts.append(out.to_ndarray().mean(axis=0))
            source_rate = frame.sample_rate
    mono = np.concatenate(parts).astype(np.float32)
    return mono if source_rate == rate else soxr.resample(mono, source_rate, rate, quality="HQ").astype(np.float32)


def windows(samples: np.ndarray, rate: int, window_s: float, overlap_s: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each window: every window - overlap, the last only if it adds audio."""
    size, hop = round(window_s * rate), round(window_s * rate) - round(overlap_s * rate)
    n = len(samples)
    starts = [0, *[s for s in range(hop, n, hop) if s + (size - hop) < n]]
    return [(s / rate, min(n, s + size) / rate) for s in starts]


def clap_audio(folder: Path, samples: np.ndarray, rate: int, spans: list[tuple[float, float]]) -> np.ndarray:
    """ClapModel ``get_audio_features`` (normalized) of each window, features by its ClapProcessor,
    ``is_longer`` false (windows are within the model's 10 s; a fused extractor marks a random clip of
    a batch without long ones as longer, which laion_clap never does for such clips)."""
    from transformers import ClapModel, ClapProcessor

    model = ClapModel.from_pretrained(folder).eval()
    processor = ClapProcessor.from_pretrained(folder)
    clips = [samples[round(s * rate) : round(e * rate)] for s, e in spans]
    inputs = processor(audio=clips, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        longer = torch.zeros_like(inputs["is_longer"], dtype=torch.bool)
        out = model.get_audio_features(input_features=inputs["input_features"], is_longer=longer)
    return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def clap_texts(folder: Path, texts: list[str]) -> np.ndarray:
    """ClapModel ``get_text_features`` (normalized)."""
    from transformers import ClapModel, ClapProcessor

    model = ClapModel.from_pretrained(folder).eval()
    processor = ClapProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model.get_text_features(**processor(text=texts, return_tensors="pt", padding=True))
    return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()
