"""SigLIP served through gateway, Redis and worker equals transformers' SiglipModel with its processor.

The tiny model ships a SentencePiece ``spiece.model`` (SiglipTokenizer, the
``sentencepiece`` package) like google/siglip-so400m; texts are padded to the
full 64 positions (``padding="max_length"``), so a vector never depends on
its batch-mates.
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
from tests.support import tinyheads
from tests.support.conformance import Served
from tests.support.images import picture

TEXTS = ["a photo of a cat", "Redis streams hold the queue.", "embedding models turn text into vectors, fast! " * 12]
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinyheads.siglip(tmp_path_factory.mktemp("siglip") / "siglip-so400m")


@pytest.fixture(scope="module")
def service(serve: Callable[..., Served], folder: Path) -> Served:
    return serve({"siglip": {"family": "image-text", "path": str(folder)}})


def reference(folder: Path, texts: list[str], pictures: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised text and image features as transformers computes them with the folder's processor."""
    from transformers import AutoProcessor, SiglipModel

    model = SiglipModel.from_pretrained(folder).eval()
    processor: Any = AutoProcessor.from_pretrained(folder)
    pils = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures]
    with torch.no_grad():
        ids = processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
        txt = model.get_text_features(input_ids=ids).pooler_output
        img = model.get_image_features(**processor(images=pils, return_tensors="pt")).pooler_output
    return (
        torch.nn.functional.normalize(txt, dim=-1).numpy(),
        torch.nn.functional.normalize(img, dim=-1).numpy(),
    )


def embed(service: Served, inputs: list[pb.Input]) -> np.ndarray:
    resp = service.stub.Embed(pb.EmbedRequest(model="siglip", inputs=inputs), timeout=30)
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)


def test_texts_and_images_match_siglip_model_with_its_processor(service: Served, folder: Path) -> None:
    pictures = [picture(21), picture(22, fmt="JPEG")]
    txt, img = reference(folder, TEXTS, pictures)
    worst = 0.0
    for i, text in enumerate(TEXTS):  # alone
        worst = max(worst, float(np.abs(embed(service, [pb.Input(text=text)])[0] - txt[i]).max()))
    mixed = [pb.Input(text=TEXTS[2]), pb.Input(image=pictures[0]), pb.Input(text=TEXTS[0])]
    mixed += [pb.Input(image=pictures[1]), pb.Input(text=TEXTS[1])]
    got = embed(service, mixed)  # mixed lengths and kinds in one batch
    worst = max(worst, float(np.abs(got - np.stack([txt[2], img[0], txt[0], img[1], txt[1]])).max()))
    print(f"siglip max abs diff: {worst}")
    assert worst <= TOL


def test_a_vector_does_not_depend_on_its_batch_mates(service: Served) -> None:
    alone = embed(service, [pb.Input(text=TEXTS[0])])[0]
    for mates in ([TEXTS[2]], [TEXTS[1], TEXTS[2]]):
        together = embed(service, [pb.Input(text=t) for t in [*mates, TEXTS[0]]])[-1]
        # Equal up to float noise of batched matmuls: padding never reaches another input.
        assert np.abs(alone - together).max() <= 1e-6


def test_over_long_texts_are_cut_at_64_tokens_or_refused(service: Served) -> None:
    import grpc

    resp = service.stub.Embed(pb.EmbedRequest(model="siglip", inputs=[pb.Input(text=TEXTS[2])]), timeout=30)
    assert resp.metadata.truncated_inputs == 1 and resp.metadata.tokens == 64
    with pytest.raises(grpc.RpcError) as err:
        service.stub.Embed(pb.EmbedRequest(model="siglip", inputs=[pb.Input(text=TEXTS[2])], truncate=False))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncate" in err.value.details()


def test_a_sentencepiece_tokenizer_cuts_on_the_right_only_and_has_no_tokenize(service: Served) -> None:
    """Left cuts, Tokenize and token ids need a fast tokenizer; SigLIP's is SentencePiece (slow)."""
    import grpc

    calls = [
        (service.stub.Embed, pb.EmbedRequest(model="siglip", inputs=[pb.Input(text="x")], truncation_side=1)),
        (service.stub.Tokenize, pb.TokenizeRequest(model="siglip", inputs=["x"])),
        (service.stub.Embed, pb.EmbedRequest(model="siglip", inputs=[pb.Input(tokens=pb.TokenIds(ids=[5]))])),
    ]
    needles = ["truncation_side: model 'siglip' (image-text) cuts texts on the right only", "fast tokenizer", "tokens"]
    for (call, request), needle in zip(calls, needles):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details(), needle
