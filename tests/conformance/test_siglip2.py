"""SigLIP2 (NaFlex) served through gateway, Redis and worker equals transformers' Siglip2Model fed by its
Siglip2Processor: texts lowercased by its Gemma tokenizer and padded to 64 with their attention mask,
images of any aspect ratio as up to 256 patches with the patch mask and the grid they came from.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from embedstream.v1 import embedder_pb2 as pb
from tests.support import tinysiglip
from tests.support.conformance import Served, assert_close
from tests.support.images import picture

TEXTS = ["A photo of a CAT", "Redis streams hold the queue.", "embedding models turn text into vectors, fast! " * 12]
#: Square, wide and tall: NaFlex keeps each one's aspect ratio in its patch grid.
PICTURES = [picture(31), picture(32, size=(96, 32), fmt="JPEG"), picture(33, size=(24, 80))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinysiglip.siglip2(tmp_path_factory.mktemp("siglip2") / "siglip2-base-patch16-naflex")


@pytest.fixture(scope="module")
def service(serve: Callable[..., Served], folder: Path) -> Served:
    return serve({"siglip2": {"family": "image-text", "path": str(folder)}})


def reference(folder: Path, texts: list[str], pictures: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised text and image features of Siglip2Model on its processor's output."""
    from transformers import AutoProcessor, Siglip2Model

    model = Siglip2Model.from_pretrained(folder).eval()
    processor: Any = AutoProcessor.from_pretrained(folder)
    pils = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures]
    with torch.no_grad():
        txt = model.get_text_features(**processor(text=texts, return_tensors="pt")).pooler_output
        img = model.get_image_features(**processor(images=pils, return_tensors="pt")).pooler_output
    return (
        torch.nn.functional.normalize(txt, dim=-1).numpy(),
        torch.nn.functional.normalize(img, dim=-1).numpy(),
    )


def embed(service: Served, inputs: list[pb.Input]) -> np.ndarray:
    resp = service.stub.Embed(pb.EmbedRequest(model="siglip2", inputs=inputs), timeout=60)
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)


def test_texts_and_images_match_siglip2_model_with_its_processor(service: Served, folder: Path) -> None:
    txt, img = reference(folder, TEXTS, PICTURES)
    singles = [embed(service, [pb.Input(text=t)])[0] for t in TEXTS] + [
        embed(service, [pb.Input(image=p)])[0] for p in PICTURES
    ]
    want = np.concatenate([txt, img])
    assert_close(np.stack(singles), want, "siglip2 single")
    mixed = [pb.Input(text=TEXTS[2]), pb.Input(image=PICTURES[1]), pb.Input(text=TEXTS[0])]
    mixed += [pb.Input(image=PICTURES[0]), pb.Input(text=TEXTS[1]), pb.Input(image=PICTURES[2])]
    got = embed(service, mixed)  # mixed lengths, kinds and aspect ratios in one request
    assert_close(got, np.stack([txt[2], img[1], txt[0], img[0], txt[1], img[2]]), "siglip2 batch")


def test_texts_are_lowercased_as_siglip2_was_trained(service: Served) -> None:
    upper, lower = embed(service, [pb.Input(text="A PHOTO OF A CAT"), pb.Input(text="a photo of a cat")])
    assert np.abs(upper - lower).max() <= 1e-6


def test_over_long_texts_are_cut_at_64_tokens(service: Served) -> None:
    resp = service.stub.Embed(pb.EmbedRequest(model="siglip2", inputs=[pb.Input(text=TEXTS[2])]), timeout=30)
    assert resp.metadata.truncated_inputs == 1 and resp.metadata.tokens == 64
    info = {m.name: m for m in service.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}["siglip2"]
    assert info.capabilities.image and info.max_input_tokens == 64 and info.profile.architecture == "siglip2"
