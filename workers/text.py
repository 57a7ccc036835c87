"""The text-dense family: one vector per text, with plain transformers + torch.

:class:`SentenceTransformerModel` reproduces ``SentenceTransformer.encode`` from
a sentence-transformers folder (``modules.json``: Transformer, Pooling with any
of its modes and ``include_prompt``, optional Dense, optional Normalize; the
prompts of ``config_sentence_transformers.json``), or runs a plain transformers
folder with the registry's pooling. The architecture's conventions
(:mod:`embedstream.workers.conventions`: Nomic prefixes and Matryoshka layer
norm, decoder instructions and last-token pooling) fill what a folder leaves out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.profile import Profile
from embedstream.registry import POOLINGS, ModelSpec
from embedstream.workers import conventions
from embedstream.workers.encoding import Encoder, modules_of, read_json, read_json_optional, weights
from embedstream.workers.model import Source, Tokens

_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class SentenceTransformerModel(Encoder):
    """A sentence-transformers (or plain transformers) folder giving one vector per text."""

    family = "text-dense"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        modules = modules_of(root, spec.name, {"Transformer", "Pooling", "Dense", "Normalize"})
        kinds = [k for k, _ in modules]
        if modules and "Pooling" not in kinds:
            raise ConfigError(f"model {spec.name}: modules.json has no Pooling module")
        super().__init__(spec, threads, str(modules[0][1]) if modules else weights(spec))
        self.architecture = str(getattr(self.model.config, "model_type", ""))
        convention = conventions.of(self.architecture)
        self.include_prompt = True
        if modules:
            pooling_cfg = read_json(modules[kinds.index("Pooling")][1] / "config.json", spec.name)
            self.pooling = pooling_mode(pooling_cfg, spec.name)
            self.include_prompt = bool(pooling_cfg.get("include_prompt", True))
            self.dense = [self.load_dense(folder) for kind, folder in modules if kind == "Dense"]
            self.normalizes = "Normalize" in kinds
        else:  # a plain transformers folder: the registry (or the architecture) says how to pool
            self.pooling = spec.pooling or convention.pooling
            self.dense = []
            self.normalizes = spec.normalize
        self.layer_norm = convention.matryoshka_layer_norm
        st = read_json_optional(root / "config_sentence_transformers.json") if root.is_dir() else {}
        self._prompts(spec, convention, st)
        self.dimensions = self._probe_dimensions()
        self.profile = Profile(
            family=self.family,
            loader="sentence-transformers" if modules else "transformers",
            architecture=self.architecture,
            pooling=self.pooling,
            include_prompt=self.include_prompt,
            normalizes=self.normalizes,
            dimensions=self.dimensions,
            max_input_tokens=self.max_input_tokens,
            padding_side=self.padding_side,
            prompts=self.prompts,
            query_prompt=self.query_prompt,
            document_prompt=self.document_prompt,
            default_prompt=self.default_prompt,
            matryoshka_dimensions=spec.matryoshka_dimensions,
            matryoshka_layer_norm=self.layer_norm,
            heads=tuple(kinds[2:] if modules else ()),
        )

    def _prompts(self, spec: ModelSpec, convention: conventions.Convention, st: dict[str, Any]) -> None:
        """The architecture's prompts, then the folder's, then the registry's; which ones input types pick."""
        folder = st.get("prompts") or {}
        if not isinstance(folder, dict) or not all(isinstance(v, str) for v in folder.values()):
            raise ConfigError(f"model {spec.name}: config_sentence_transformers.json prompts must map names to text")
        # sentence-transformers writes empty "query"/"document" prompts into every folder it saves:
        # they prepend nothing, and would hide the architecture's own prompt of that name.
        prompts = {**convention.prompts, **{k: v for k, v in folder.items() if v}}
        if spec.instruction:
            if not convention.instruction:
                raise ConfigError(f"model {spec.name}: instruction is for decoder embedders, not {self.architecture}")
            prompts["query"] = convention.instruction.format(task=spec.instruction)
        self.prompts: dict[str, str] = {**prompts, **spec.prompts}

        def pick(registry: str, usual: str, own: str) -> str:
            return registry or own or (usual if usual in self.prompts else "")

        self.query_prompt = pick(spec.query_prompt, "query", convention.query_prompt)
        self.document_prompt = pick(spec.document_prompt, "document", convention.document_prompt)
        self.default_prompt = spec.default_prompt or str(st.get("default_prompt_name") or "")
        for chosen in (self.query_prompt, self.document_prompt, self.default_prompt):
            if chosen and chosen not in self.prompts:
                raise ConfigError(f"model {spec.name}: prompt {chosen!r} is not one of {sorted(self.prompts)}")
        # Pooling without the prompt needs each prompt's length in tokens, as
        # sentence-transformers counts it: without a trailing special token.
        specials = set(self.tokenizer.all_special_ids)
        self._prompt_tokens: list[tuple[str, int]] = []
        if not self.include_prompt:
            for text in sorted(set(self.prompts.values()), key=len, reverse=True):
                ids = self._backend.encode(text).ids if text else []
                self._prompt_tokens.append((text, len(ids) - (1 if ids and ids[-1] in specials else 0)))

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Fast-tokenizer ids; marks the prompt's tokens where pooling leaves them out."""
        out = super().tokenize(sources, side)
        if self._prompt_tokens:
            for tok, text in zip(out, sources):
                if isinstance(text, str):
                    tok.prompt_tokens = next((n for p, n in self._prompt_tokens if p and text.startswith(p)), 0)
        return out

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Pad to the longest in the batch, run the encoder, pool, dense, normalize."""
        torch = self._torch
        with torch.inference_mode():
            hidden, mask = self.encode(batch)
            vecs = self._pool(hidden, mask, batch)
            for linear, act in self.dense:
                vecs = act(linear(vecs))
            if self.layer_norm and any(t.dimensions for t in batch):
                # Nomic Embed v1.5's Matryoshka: layer norm over the full vector; the cut
                # and the L2 normalization follow in the finish step.
                cut = torch.tensor([t.dimensions > 0 for t in batch], device=vecs.device)[:, None]
                normed = torch.nn.functional.layer_norm(vecs, (vecs.shape[1],))
                vecs = torch.where(cut, normed, vecs)
            want = torch.tensor(normalize, device=vecs.device)[:, None]
            vecs = torch.where(want, torch.nn.functional.normalize(vecs, p=2, dim=1), vecs)
            out: np.ndarray = vecs.float().cpu().numpy()
            return out

    def _pool(self, hidden: Any, mask: Any, batch: list[Tokens]) -> Any:
        """sentence-transformers' Pooling on a right- or left-padded batch."""
        torch = self._torch
        if self.pooling == "lasttoken":  # the last real token, on either padding side
            last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        full = mask
        if any(t.prompt_tokens for t in batch):
            first = mask.argmax(dim=1)
            skip = torch.tensor([t.prompt_tokens for t in batch], device=mask.device)
            positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
            mask = mask.masked_fill(positions < (first + skip)[:, None], 0)
        if self.pooling == "cls":  # the first real token (left padding puts pads first)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.argmax(dim=1)]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
        if self.pooling == "weightedmean":
            # Position weights count from the first real token, prompt or not.
            weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)[None, :, None]
            weights = weights - full.argmax(dim=1).to(hidden.dtype)[:, None, None]
            m = m * weights
        summed = (hidden * m).sum(dim=1)
        counts = m.sum(dim=1).clamp(min=1e-9)
        if self.pooling == "mean_sqrt_len_tokens":
            return summed / counts.sqrt()
        return summed / counts

    def _probe_dimensions(self) -> int:
        probe = Tokens([self._pad_id, self._pad_id], 2, False, "")
        return int(self.forward([probe], [False]).shape[1])


def pooling_mode(cfg: dict[str, Any], name: str) -> str:
    """The one pooling mode a sentence-transformers Pooling config names (either way it can name it)."""
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        if isinstance(mode, list) and len(mode) == 1:
            mode = mode[0]
        mode = str(mode)
    else:
        modes = [mode for key, mode in _POOLING_FLAGS.items() if cfg.get(key)]
        if len(modes) != 1:
            raise ConfigError(f"model {name}: pooling must use exactly one mode, found {modes or 'none'}")
        mode = modes[0]
    if mode not in POOLINGS:
        raise ConfigError(f"model {name}: pooling mode {mode!r} is not supported")
    return mode
