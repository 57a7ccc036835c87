"""Image+text models (CLIP, SigLIP): images and texts into one space.

Two loaders share one behaviour: :class:`OpenClipModel` runs open_clip models
(``local-dir:`` folders holding ``open_clip_config.json`` and weights, or a hub
id), :class:`HFClipModel` runs transformers' CLIPModel, SiglipModel and Siglip2Model
(NaFlex) folders.
Images are decoded (size-checked again, EXIF orientation applied) and
preprocessed on the prep thread, so the model thread only runs the towers.
Texts and images of one batch each go through their own tower; the vectors are
returned in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstream import images
from embedstream.errors import ConfigError
from embedstream.registry import HUB_SCHEME, ModelSpec
from embedstream.workers import strict
from embedstream.workers.encoding import init_torch, torch_dtype, two_towers, weights
from embedstream.workers.model import Source, Tokens
from embedstream.workers.vocabulary import Vocabulary, size_of

#: Batch cost of an image when the vision tower does not say (tokens).
IMAGE_COST = 256
#: What SigLIP2's NaFlex image processor gives per image, and its vision tower takes.
NAFLEX = ("pixel_values", "pixel_attention_mask", "spatial_shapes")


def load_image_text(spec: ModelSpec, threads: int, image_limits: tuple[int, int]) -> Any:
    """The right loader for an image-text folder: open_clip or transformers."""
    backend = spec.backend
    if not backend:
        folder = Path(weights(spec))
        backend = "open_clip" if (folder / "open_clip_config.json").exists() else "transformers"
    if backend == "open_clip":
        return OpenClipModel(spec, threads, image_limits)
    return HFClipModel(spec, threads, image_limits)


class _TwoTowers:
    """What both loaders share: image preparation and the split forward pass."""

    family = "image-text"
    output = "dense"
    normalizes = True
    name: str
    dimensions: int
    max_input_tokens: int
    image_cost: int
    vocabulary: Vocabulary | None = None

    def __init__(self, spec: ModelSpec, threads: int, image_limits: tuple[int, int]) -> None:
        self._torch, self.device = init_torch(spec, threads)
        self.dtype = torch_dtype(self._torch, spec.dtype)
        self.name = spec.name
        self.image_limits = image_limits

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Token ids for texts (cut on ``side`` where the tokenizer can); decoded, preprocessed pixels for images."""
        out = []
        for source in sources:
            if isinstance(source, bytes):
                try:
                    image = images.decode(source, *self.image_limits)
                    pixels = self.preprocess(image)
                except images.ImageError as exc:
                    out.append(Tokens(None, 1, False, "", error=f"image refused: {exc}"))
                    continue
                out.append(Tokens(None, self.image_cost, False, "", pixels=pixels))
            elif isinstance(source, str) and side != "right" and self.vocabulary is None:
                out.append(Tokens(None, 1, False, "", error=f"model {self.name} cuts texts on the right only"))
            elif isinstance(source, str):
                out.append(self.tokenize_text(source, side))
            else:
                out.append(Tokens(None, 1, False, "", error=f"model {self.name} takes texts and images"))
        return out

    def prepare_frame(self, image: Any) -> Tokens:
        """A decoded RGB video frame, preprocessed as any image (``workers/frames.py`` calls it)."""
        return Tokens(None, self.image_cost, False, "", pixels=self.preprocess(image))

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Each input through its tower, normalized where asked, in input order."""
        return two_towers(self._torch, batch, normalize, self.dimensions, self.encode_texts, self.encode_images)

    def encode_images(self, batch: list[Tokens]) -> Any:
        """Image vectors of preprocessed pixels."""
        raise NotImplementedError

    def encode_texts(self, batch: list[Tokens]) -> Any:
        """Text vectors of token ids."""
        raise NotImplementedError

    def preprocess(self, image: Any) -> Any:
        """The model's pixel tensor (C, H, W) for an RGB image."""
        raise NotImplementedError

    def tokenize_text(self, text: str, side: str = "right") -> Tokens:
        """Token ids of one text, cut to the context length."""
        raise NotImplementedError


class OpenClipModel(_TwoTowers):
    """An open_clip model, loaded the way ``open_clip.create_model_and_transforms`` loads it."""

    def __init__(self, spec: ModelSpec, threads: int, image_limits: tuple[int, int]) -> None:
        import open_clip  # type: ignore[import-untyped]

        super().__init__(spec, threads, image_limits)
        ref = "hf-hub:" + spec.path[len(HUB_SCHEME) :] if spec.path.startswith(HUB_SCHEME) else f"local-dir:{spec.path}"
        if not spec.path.startswith(HUB_SCHEME) and not any(
            f.suffix in (".safetensors", ".bin", ".pth") for f in Path(spec.path).iterdir()
        ):
            # open_clip would build the model with random weights and only log it.
            raise ConfigError(f"model {spec.name}: {spec.path} holds no weights (*.safetensors, *.bin, *.pth)")
        try:
            model, _, self._preprocess = open_clip.create_model_and_transforms(ref, device=self.device)
        except RuntimeError as exc:  # load_state_dict(strict=True): missing, unexpected or mis-shaped weights
            raise ConfigError(f"model {spec.name}: open_clip weights do not match its config: {exc}") from None
        self.model = model.to(self.dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(ref)
        self.context = int(getattr(self.tokenizer, "context_length", 77))
        self.max_input_tokens = self.context
        self._bpe = isinstance(self.tokenizer, open_clip.tokenizer.SimpleTokenizer)
        grid = getattr(self.model.visual, "grid_size", None)
        self.image_cost = int(grid[0] * grid[1] + 1) if grid else IMAGE_COST
        self.dimensions = int(self.encode_texts([self.tokenize_text("a")]).shape[-1])

    def preprocess(self, image: Any) -> Any:
        """open_clip's own eval transform."""
        return self._preprocess(image)

    def tokenize_text(self, text: str, side: str = "right") -> Tokens:
        """open_clip's tokenizer (always the full context, as open_clip runs it; cut on the right)."""
        ids = self.tokenizer([text])[0]
        real = int((ids != 0).sum())
        # SimpleTokenizer cuts silently; count its BPE tokens (+ start and end) to tell.
        truncated = self._bpe and len(self.tokenizer.encode(text)) + 2 > self.context
        return Tokens(ids.tolist(), real, bool(truncated), text)

    def encode_texts(self, batch: list[Tokens]) -> Any:
        """open_clip ``encode_text`` on the full-context ids."""
        ids = self._torch.tensor([t.ids for t in batch], dtype=self._torch.long, device=self.device)
        return self.model.encode_text(ids)

    def encode_images(self, batch: list[Tokens]) -> Any:
        """open_clip ``encode_image``."""
        pixels = self._torch.stack([t.pixels for t in batch]).to(self.device, self.dtype)
        return self.model.encode_image(pixels)


class HFClipModel(_TwoTowers):
    """A transformers CLIPModel or SiglipModel folder."""

    def __init__(self, spec: ModelSpec, threads: int, image_limits: tuple[int, int]) -> None:
        import transformers

        super().__init__(spec, threads, image_limits)
        folder = weights(spec)
        self.model = strict.pretrained("AutoModel", folder, spec.name, dtype=self.dtype).to(self.device).eval()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except ImportError as exc:
            raise strict.missing_package(spec.name, exc) from None
        self.processor = transformers.AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
        # SigLIP pools the last position and was trained on texts padded to the
        # full length: it must see them that way. CLIP pools the end token.
        self.siglip = str(self.model.config.model_type).startswith("siglip")
        # SigLIP2 (NaFlex): images as patch sequences with a patch mask and their grid;
        # texts as its processor gives them (lowercased, padded on the tokenizer's side, masked).
        self.naflex = self.model.config.model_type == "siglip2"
        self._left = getattr(self.tokenizer, "padding_side", "right") == "left"
        self._mask = not self.siglip or self.naflex
        text_cfg = self.model.config.text_config
        limit = int(getattr(text_cfg, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        self.max_input_tokens = int(spec.max_input_tokens or limit)
        # SigLIP pads to its full text length whatever the registry's cut, so no vector depends on batch-mates.
        self._full_width = limit
        # SigLIP ships a SentencePiece model (a slow tokenizer, package sentencepiece): no Vocabulary
        # (Tokenize, Decode, token ids and left cuts need a fast one); CLIP a fast one.
        if self.tokenizer.is_fast:
            self.vocabulary = Vocabulary(self.tokenizer, self.max_input_tokens, size_of(self.model, self.tokenizer))
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        vision = self.model.config.vision_config
        if self.naflex:
            self.image_cost = int(getattr(self.processor, "max_num_patches", 0) or vision.num_patches)
        else:
            self.image_cost = int((vision.image_size // vision.patch_size) ** 2 + 1)
        self.dimensions = int(self.encode_texts([self.tokenize_text("a")]).shape[-1])

    def preprocess(self, image: Any) -> Any:
        """The folder's image processor: pixels, or (NaFlex) patches with their mask and grid."""
        out = self.processor(images=image, return_tensors="pt")
        if self.naflex:
            return {key: out[key][0] for key in NAFLEX}
        return out["pixel_values"][0]

    def tokenize_text(self, text: str, side: str = "right") -> Tokens:
        """Tokenizer ids cut at the text tower's positions on ``side`` (the special end token kept, as the
        processor cuts); a slow tokenizer cuts on the right only (``tokenize`` refuses the left)."""
        if self.vocabulary is not None:
            enc = self.vocabulary.cutter(side).encode(text)
            return Tokens(enc.ids, len(enc.ids), bool(enc.overflowing), text)
        ids: list[int] = self.tokenizer(text)["input_ids"]
        cut = len(ids) > self.max_input_tokens
        if cut:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_input_tokens)["input_ids"]
        return Tokens(ids, len(ids), cut, text)

    def encode_texts(self, batch: list[Tokens]) -> Any:
        """``get_text_features``: SigLIP on ids padded to full length, CLIP with a mask."""
        torch = self._torch
        width = self._full_width if self.siglip else max(t.length for t in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tok in enumerate(batch):
            span = slice(width - tok.length, width) if self._left else slice(0, tok.length)
            ids[row, span] = torch.tensor(tok.ids)
            mask[row, span] = 1
        inputs = {"input_ids": ids.to(self.device)}
        if self._mask:
            inputs["attention_mask"] = mask.to(self.device)
        return _features(self.model.get_text_features(**inputs))

    def encode_images(self, batch: list[Tokens]) -> Any:
        """``get_image_features``."""
        torch = self._torch
        if self.naflex:  # every image is padded to max_num_patches by its processor, so they stack
            inputs = {key: torch.stack([t.pixels[key] for t in batch]).to(self.device) for key in NAFLEX}
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            return _features(self.model.get_image_features(**inputs))
        pixels = torch.stack([t.pixels for t in batch]).to(self.device, self.dtype)
        return _features(self.model.get_image_features(pixel_values=pixels))


def _features(out: Any) -> Any:
    # transformers 5 returns a model output (pooler_output = the projected
    # features) where 4.x returned the tensor itself.
    return getattr(out, "pooler_output", out)
