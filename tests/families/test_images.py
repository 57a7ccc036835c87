"""Image-text families against open_clip and transformers, and hostile images refused or survived."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import redis
import torch
from PIL import Image

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.families import TEXTS, Families, values
from tests.support.images import picture, rotated_jpeg
from tests.support.processes import entries_added


def test_open_clip_images_and_texts_share_one_space(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    import open_clip  # type: ignore[import-untyped]
    from PIL import ImageOps

    name = f"local-dir:{families.models['open_clip']}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    pictures = [picture(1), picture(2, (64, 64), "JPEG"), rotated_jpeg(), picture(3, (30, 50), "WEBP", lossless=True)]
    inputs = [pb.Input(text=TEXTS[0]), *[pb.Input(image=p) for p in pictures], pb.Input(text=TEXTS[1])]
    got = values(stub.Embed(pb.EmbedRequest(model="open-clip", inputs=inputs), timeout=30))
    with torch.no_grad():
        pils = [ImageOps.exif_transpose(Image.open(io.BytesIO(p))).convert("RGB") for p in pictures]
        img = model.encode_image(torch.stack([preprocess(p) for p in pils]), normalize=True).numpy()
        txt = model.encode_text(tokenizer(TEXTS[:2]), normalize=True).numpy()
        unrotated = model.encode_image(preprocess(Image.open(io.BytesIO(pictures[2])).convert("RGB"))[None]).numpy()
    expected = np.concatenate([txt[:1], img, txt[1:]])
    assert got.shape == (6, 32) and np.abs(got - expected).max() <= 1e-5
    unrotated /= np.linalg.norm(unrotated)
    assert np.abs(got[3] - unrotated[0]).max() > 1e-3  # EXIF orientation was honoured


def test_transformers_clip_and_siglip_match_transformers(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    pictures = [picture(4), picture(5, (80, 20), "JPEG")]
    inputs = [
        pb.Input(image=pictures[0]),
        pb.Input(text=TEXTS[2]),
        pb.Input(image=pictures[1]),
        pb.Input(text=TEXTS[0]),
    ]
    for name, key, siglip in (("hf-clip", "hf_clip", False), ("siglip", "siglip", True)):
        folder = str(families.models[key])
        model = AutoModel.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        proc = AutoImageProcessor.from_pretrained(folder)
        pils = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures]
        with torch.no_grad():
            img = model.get_image_features(pixel_values=proc(images=pils, return_tensors="pt")["pixel_values"])
            img = getattr(img, "pooler_output", img)
            if siglip:
                ids = tok(
                    [TEXTS[2], TEXTS[0]], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
                )
                txt = model.get_text_features(input_ids=ids["input_ids"])
            else:
                enc = tok([TEXTS[2], TEXTS[0]], padding=True, truncation=True, return_tensors="pt")
                txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            txt = getattr(txt, "pooler_output", txt)
        img = torch.nn.functional.normalize(img, dim=-1).numpy()
        txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
        expected = np.stack([img[0], txt[0], img[1], txt[1]])
        got = values(stub.Embed(pb.EmbedRequest(model=name, inputs=inputs), timeout=30))
        assert np.abs(got - expected).max() <= 1e-5, name


def test_hostile_images_are_refused_before_queueing(stub: pb_grpc.EmbedderStub, r: redis.Redis) -> None:
    from tests.support.images import SVG, gif, png_bomb, truncated_jpeg

    before = entries_added(r, "clip")
    for data, needle in (
        (png_bomb(), "20000x20000 pixels exceed the limit"),
        (truncated_jpeg(), "truncated JPEG"),
        (SVG, "SVG is not accepted"),
        (gif(), "not a JPEG, PNG or WebP"),
    ):
        request = pb.EmbedRequest(model="clip", inputs=[pb.Input(text="ok"), pb.Input(image=data)])
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("inputs[1].image:") and needle in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=[pb.Input(image=picture(1))]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes text only" in err.value.details()
    assert entries_added(r, "clip") == before


def test_the_worker_survives_hostile_images_that_skip_the_gateway(
    stub: pb_grpc.EmbedderStub, families: Families, r: redis.Redis
) -> None:
    import time

    from embedstream import keys, wire
    from tests.support.images import SVG, png_bomb, truncated_jpeg
    from tests.support.processes import read_replies

    replies = "test-hostile-replies"
    r.xadd(replies, {"x": "start"})
    hostile = {"bomb": png_bomb(), "truncated": truncated_jpeg(), "svg": SVG, "junk": b"\xff\xd8\xff" + b"\x00" * 64}
    for name, data in hostile.items():
        job = wire.Job(name, replies, int(time.time() * 1000) + 30_000, int(time.time() * 1000), ["fine", data])
        r.xadd(keys.queue("clip"), {keys.PAYLOAD: wire.encode_job(job)})
    answers = read_replies(r, replies, len(hostile))
    assert set(answers) == set(hostile)
    for reply in answers.values():
        assert reply.error_code == "INVALID_ARGUMENT" and reply.error_message.startswith("inputs[1]: image refused")
    assert families.workers["clip"].alive()
    ok = stub.Embed(pb.EmbedRequest(model="clip", inputs=[pb.Input(image=picture(9))]), timeout=30)
    assert len(ok.embeddings[0].values) == 32
