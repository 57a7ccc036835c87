"""Jina Embeddings v3: a task LoRA adapter per input, mean pooling, Matryoshka.

A jina-embeddings-v3 folder as transformers reads it natively (``model_type``
``jina_embeddings_v3``; the original checkpoint's weight names, which transformers
converts on load) with one PEFT LoRA adapter per task in a subfolder named after
the task (``retrieval_query``, ``retrieval_passage``, ``separation``,
``classification``, ``text_matching``), as transformers' own integration tests load
it. ``config.json`` lists the tasks (``lora_adaptations``), their instructions
(``task_instructions``; else ``config_sentence_transformers.json``'s ``prompts``)
and the Matryoshka sizes (``matryoshka_dimensions``).

Every task is a prompt name: a request picks one with ``prompt_name``, or with
``input_type`` (query: ``retrieval.query``, document: ``retrieval.passage``). Its
instruction is prepended and its adapter runs for that input only, so one batch
mixes tasks in one forward pass (PEFT's mixed-batch LoRA). No task: the base model
without adapters, as the model card describes. The vector is the mean of the
token states (instruction included), L2-normalised; Matryoshka cuts, then
re-normalises.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import HUB_SCHEME, ModelSpec
from embedstream.workers import profiles, strict
from embedstream.workers.encoding import Encoder, read_json, read_json_optional, weights
from embedstream.workers.model import Tokens

ARCHITECTURE = "jina_embeddings_v3"
#: The adapter name PEFT uses for "no adapter" in a mixed batch.
BASE = "__base__"


def is_jina_v3(spec: ModelSpec) -> bool:
    """A local folder whose config.json names the native Jina v3 architecture."""
    if spec.path.startswith(HUB_SCHEME):
        return False
    config = Path(spec.path) / "config.json"
    return config.is_file() and read_json_optional(config).get("model_type") == ARCHITECTURE


def adapter_folder(task: str) -> str:
    """The subfolder (and PEFT adapter name) of a task: ``retrieval.query`` -> ``retrieval_query``."""
    return re.sub(r"[^0-9A-Za-z_]", "_", task)


class JinaV3Model(Encoder):
    """One vector per text, through the adapter of the task its request named."""

    family = "text-dense"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        super().__init__(spec, threads, str(root))
        config = read_json(root / "config.json", spec.name)
        st = read_json_optional(root / "config_sentence_transformers.json")
        folder_prompts = st.get("prompts") or {}
        tasks = [str(t) for t in (config.get("lora_adaptations") or folder_prompts)]
        if not tasks:
            raise ConfigError(f"model {spec.name}: {root / 'config.json'} lists no lora_adaptations (task adapters)")
        self.adapters = {task: adapter_folder(task) for task in tasks}
        self.model = self._with_adapters(root, spec.name)
        instructions = config.get("task_instructions") or folder_prompts
        self.prompts = {**{t: str(instructions.get(t) or "") for t in tasks}, **spec.prompts}
        self.normalizes = spec.normalize
        hidden = int(self.model.config.hidden_size)
        self.dimensions = hidden
        sizes = spec.matryoshka_dimensions or tuple(int(d) for d in config.get("matryoshka_dimensions") or ())
        self.profile = profiles.built(
            spec,
            self,
            loader="transformers+peft",
            pooling="mean",
            prompts=self.prompts,
            query_prompt=spec.query_prompt or ("retrieval.query" if "retrieval.query" in tasks else ""),
            document_prompt=spec.document_prompt or ("retrieval.passage" if "retrieval.passage" in tasks else ""),
            matryoshka_dimensions=tuple(sorted({d for d in sizes if 0 < d < hidden}, reverse=True)),
            heads=tuple(f"LoRA {task}" for task in tasks),
        )

    def _with_adapters(self, root: Path, name: str) -> Any:
        """The model wrapped in PEFT with every task's adapter loaded, each matching its file exactly."""
        from peft import PeftModel

        wrapped: Any = None
        for task, adapter in self.adapters.items():
            folder = root / adapter
            if not (folder / "adapter_config.json").is_file():
                raise ConfigError(f"model {name}: task {task!r} has no LoRA adapter ({folder}/adapter_config.json)")
            with warnings.catch_warnings():  # peft 0.21 reads an attribute transformers 5.24 deprecated
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                if wrapped is None:
                    wrapped = PeftModel.from_pretrained(self.model, str(folder), adapter_name=adapter)
                else:
                    wrapped.load_adapter(str(folder), adapter_name=adapter)
            # PEFT leaves a weight its file lacks at its initial value and only warns: compare names.
            own = {n.replace(f".{adapter}", "") for n, _ in wrapped.named_parameters() if f".{adapter}" in n}
            stored = _keys(folder, name)
            strict.check(name, f"LoRA adapter {folder}", missing=own - stored, unexpected=stored - own)
        return wrapped.eval()

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Mean-pooled token states, each input through its task's adapter (or none)."""
        torch = self._torch
        names = [self.adapters.get(tok.prompt, BASE) for tok in batch]
        with torch.inference_mode():
            hidden, mask = self.encode(batch, adapter_names=names)
            weights_ = mask[..., None].to(hidden.dtype)
            pooled = (hidden * weights_).sum(1) / weights_.sum(1).clamp(min=1e-9)
            want = torch.tensor(normalize, device=pooled.device)[:, None]
            pooled = torch.where(want, torch.nn.functional.normalize(pooled, dim=-1), pooled)
        out: np.ndarray = pooled.float().cpu().numpy()
        return out


def _keys(folder: Path, name: str) -> set[str]:
    """The weight names of an adapter's file (safetensors, else PyTorch's pickle-free bin)."""
    file = folder / "adapter_model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            return set(f.keys())
    file = folder / "adapter_model.bin"
    if not file.is_file():
        raise ConfigError(f"model {name}: {folder} holds no adapter_model.safetensors")
    import torch

    return set(torch.load(str(file), map_location="cpu", weights_only=True))
