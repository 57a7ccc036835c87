"""The text-dense family: one vector per text, with plain transformers + torch.

:class:`SentenceTransformerModel` reproduces ``SentenceTransformer.encode`` from
a sentence-transformers folder (``modules.json``: Transformer, Pooling, optional
Dense, optional Normalize), or runs a plain transformers folder with the
registry's pooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from embedstream.workers.encoding import Encoder, modules_of, read_json, weights
from embedstream.workers.model import Tokens

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec

_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
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
        if modules:
            self.pooling = _pooling_mode(read_json(modules[kinds.index("Pooling")][1] / "config.json", spec.name))
            self.dense = [self.load_dense(folder) for kind, folder in modules if kind == "Dense"]
            self.normalizes = "Normalize" in kinds
        else:  # a plain transformers folder: the registry says how to pool
            self.pooling = spec.pooling or "mean"
            self.dense = []
            self.normalizes = spec.normalize
        self.dimensions = self._probe_dimensions()

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Pad to the longest in the batch, run the encoder, pool, dense, normalize."""
        torch = self._torch
        with torch.inference_mode():
            hidden, mask = self.encode(batch)
            vecs = self._pool(hidden, mask)
            for linear, act in self.dense:
                vecs = act(linear(vecs))
            want = torch.tensor(normalize, device=vecs.device)[:, None]
            vecs = torch.where(want, torch.nn.functional.normalize(vecs, p=2, dim=1), vecs)
            out: np.ndarray = vecs.float().cpu().numpy()
            return out

    def _pool(self, hidden: Any, mask: Any) -> Any:
        torch = self._torch
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(m == 0, -1e9).max(dim=1).values
        if self.pooling == "lasttoken":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        summed = (hidden * m).sum(dim=1)
        counts = m.sum(dim=1).clamp(min=1e-9)
        if self.pooling == "mean_sqrt_len_tokens":
            return summed / counts.sqrt()
        return summed / counts

    def _probe_dimensions(self) -> int:
        probe = Tokens([self._pad_id, self._pad_id], 2, False, "")
        return int(self.forward([probe], [False]).shape[1])


def _pooling_mode(cfg: dict[str, Any]) -> str:
    if "pooling_mode" in cfg:
        mode = str(cfg["pooling_mode"])
    else:
        modes = [mode for key, mode in _POOLING_FLAGS.items() if cfg.get(key)]
        if len(modes) != 1:
            raise ConfigError(f"pooling must use exactly one mode, found {modes or 'none'}")
        mode = modes[0]
    if mode not in set(_POOLING_FLAGS.values()):
        raise ConfigError(f"pooling mode {mode!r} is not supported")
    return mode
