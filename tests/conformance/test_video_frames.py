"""Video frames through a transformers CLIP folder (the other image-text loader), in process: each
segment equals ``CLIPModel.get_image_features`` on the same decoded frames (the mean for a scene)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from embedstream import media, mediawire, wire
from embedstream.registry import ModelSpec
from embedstream.workers import media as worker_media
from embedstream.workers.loader import load
from tests.support import media as clips
from tests.support import mediaref, tinymodels
from tests.support.conformance import TOLERANCE

BUDGET = worker_media.Budget(media.Limits(1 << 30, 3600, 1 << 30), media.Limits(1 << 30, 3600), 64)


def test_hf_clip_scene_segments_equal_get_image_features(tmp_path: Path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    folder = tinymodels.hf_clip_model(tmp_path / "hf-clip")
    model = load(ModelSpec(name="hf-clip", family="image-text", path=str(folder)), threads=1)
    video = clips.video((2.0, 1.5, 2.5), fmt="webm")
    job = wire.Job("v", "", 0, 0, [video], kinds="v", media=mediawire.Media(scenes=True, output="both"))
    tokens, layout, error = worker_media.prepare(model, job, job.inputs, BUDGET)
    assert error is None and layout is not None
    got = np.stack(worker_media.pool(list(model.forward(tokens, [True] * len(tokens))), layout, 0, True))
    sampled = [[0.0, 1.0], [2.0, 3.0], [3.5, 4.5, 5.5]]
    reference = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    scenes = []
    for times in sampled:
        pixels = processor(images=mediaref.frames_at(video, times), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features = reference.get_image_features(pixel_values=pixels)
        scenes.append(torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1).numpy())
    expected = np.stack([*(mediaref.mean_of(s) for s in scenes), mediaref.mean_of(np.concatenate(scenes))])
    diff = float(np.abs(got - expected).max())
    print(f"CONFORMANCE hf-clip video scenes: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE
    assert [(round(p.segment.start_s, 2), round(p.segment.end_s, 2)) for p in layout.pieces] == [
        (0.0, 2.0),
        (2.0, 3.5),
        (3.5, 6.0),
        (0.0, 6.0),
    ]
