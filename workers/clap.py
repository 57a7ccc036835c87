"""Audio+text models (CLAP, as transformers ships it): audio windows and texts into one space.

A ``ClapModel`` folder with its processor (``ClapFeatureExtractor`` + the
RoBERTa tokenizer). Audio arrives as windows of mono samples at the feature
extractor's rate (``workers/sound.py`` resamples and cuts them); each window's
log-mel features are computed on the prep thread, exactly as ``ClapProcessor``
computes them, and the model thread runs ``get_audio_features``. Windows are at
most the extractor's ``max_length_s``, so its random cropping of longer clips
(``rand_trunc``, ``fusion``) never runs: the same window always gives the same
vector. A fused checkpoint gets ``is_longer`` false for every window, as
laion_clap sets it for clips within the limit (the feature extractor would mark
a random clip of a batch holding no long one as longer, so a vector would
depend on its batch-mates). Texts go through ``get_text_features`` with an
attention mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers import strict
from embedstream.workers.encoding import init_torch, torch_dtype, two_towers, weights
from embedstream.workers.model import Source, Tokens
from embedstream.workers.vocabulary import Vocabulary, size_of

#: Batch cost of one audio window (tokens): CLAP's HTSAT sees 64x64 patches through windowed attention.
WINDOW_COST = 512


class ClapAudioModel:
    """A transformers ClapModel folder: ``get_audio_features`` and ``get_text_features``."""

    family = "audio-text"
    output = "dense"
    normalizes = True

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import transformers

        self._torch, self.device = init_torch(spec, threads)
        self.dtype = torch_dtype(self._torch, spec.dtype)
        self.name = spec.name
        folder = weights(spec)
        self.model = strict.pretrained("AutoModel", folder, spec.name, dtype=self.dtype).to(self.device).eval()
        if not hasattr(self.model, "get_audio_features"):
            raise ConfigError(f"model {spec.name}: {folder} holds a {type(self.model).__name__}, not a ClapModel")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except ImportError as exc:
            raise strict.missing_package(spec.name, exc) from None
        self.extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)  # type: ignore[no-untyped-call]
        #: The rate windows are resampled to, and the longest window the model hears whole.
        self.sample_rate = int(self.extractor.sampling_rate)
        self.window_s = float(self.extractor.nb_max_samples) / self.sample_rate
        positions = int(getattr(self.model.config.text_config, "max_position_embeddings", 0) or 0)
        limit = min(int(self.tokenizer.model_max_length), positions - 2 if positions > 2 else 10**9)
        self.max_input_tokens = int(spec.max_input_tokens or limit)
        size = size_of(self.model, self.tokenizer)
        self.vocabulary: Vocabulary | None = Vocabulary(self.tokenizer, self.max_input_tokens, size)
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self.dimensions = int(self.encode_texts([self.tokenize_text("a")]).shape[-1])

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Token ids for texts (cut on ``side``); an audio clip must come through ``prepare_window``."""
        out = []
        for source in sources:
            if isinstance(source, str):
                out.append(self.tokenize_text(source, side))
            else:
                out.append(Tokens(None, 1, False, "", error=f"model {self.name} takes texts and audio"))
        return out

    def tokenize_text(self, text: str, side: str = "right") -> Tokens:
        """Fast-tokenizer ids cut at the text tower's positions, on ``side``."""
        assert self.vocabulary is not None
        enc = self.vocabulary.cutter(side).encode(text)
        return Tokens(enc.ids, len(enc.ids), bool(enc.overflowing), text)

    def prepare_window(self, samples: np.ndarray) -> Tokens:
        """One window of mono samples at ``sample_rate`` as the feature extractor's input features."""
        features = self.extractor(samples, sampling_rate=self.sample_rate, return_tensors="pt")
        return Tokens(None, WINDOW_COST, False, "", pixels=features["input_features"][0])

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Texts and windows each through their tower, normalized where asked, in input order."""
        return two_towers(self._torch, batch, normalize, self.dimensions, self.encode_texts, self.encode_windows)

    def encode_texts(self, batch: list[Tokens]) -> Any:
        """``get_text_features`` on ids padded to the batch's longest, with a mask."""
        torch = self._torch
        width = max(t.length for t in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tok in enumerate(batch):
            ids[row, : tok.length] = torch.tensor(tok.ids)
            mask[row, : tok.length] = 1
        out = self.model.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return getattr(out, "pooler_output", out)

    def encode_windows(self, batch: list[Tokens]) -> Any:
        """``get_audio_features`` of the windows' input features."""
        torch = self._torch
        features = torch.stack([t.pixels for t in batch]).to(self.device, self.dtype)
        longer = torch.zeros((len(batch), 1), dtype=torch.bool, device=self.device)  # windows are never longer
        out = self.model.get_audio_features(input_features=features, is_longer=longer)
        return getattr(out, "pooler_output", out)
