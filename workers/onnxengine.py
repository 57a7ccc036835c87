"""The onnx engine: which models ONNX Runtime serves, their verified graphs, and the choice a worker makes.

On CPU, ONNX Runtime runs a small encoder's forward pass 1.4x (32 texts) to 2.5x
(one text) faster than torch eager on the same cores, and a worker that never
imports torch holds ~500 MiB less. So a registry entry's ``engine = "auto"`` (the
default) serves a text-dense encoder with it where the engine can serve the
model exactly: a sentence-transformers folder of Transformer, Pooling (mean, cls
or max, prompt tokens included) and optionally Normalize, or a plain folder with
such pooling; one of :data:`ARCHITECTURES`; on CPU in float32. Everything else
(Dense heads, decoder embedders, Nomic, Jina v3, BGE-M3, accelerators) runs on
torch. ``engine = "onnx"`` insists (a model it cannot serve stops the load, with
the reason); ``engine = "torch"`` never uses it.

The graph is exported once per model folder by :mod:`embedstream.workers.onnxexport`
in a process of its own, checked there against torch on padded batches of shapes
the export never saw, and kept in the cache folder (``EMBEDSTREAM_ONNX_CACHE``;
``~/.cache/embedstream/onnx``) under a key of the contents of its weights and
config and the torch, transformers and onnx versions. With "auto", a failed export
leaves the model on torch (logged, with the reason); the self-test every model
passes at load (:mod:`embedstream.workers.selftest`) runs on the graph as well.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from embedstream.errors import ConfigError
from embedstream.registry import HUB_SCHEME, ModelSpec
from embedstream.workers import conventions
from embedstream.workers.encoding import modules_of, read_json_optional
from embedstream.workers.m3 import is_m3
from embedstream.workers.text import pooling_mode

log = logging.getLogger("embedstream")

#: Encoder architectures (config.json model_type) the export is known to trace right.
ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra")
POOLINGS = ("mean", "cls", "max")
#: Raised when the export or its check changes, so older graphs are not reused.
RECIPE = 1
#: How long one export may take before the worker gives up on it.
EXPORT_TIMEOUT_S = 600.0


def cache_folder(setting: str = "") -> Path:
    """Where exported graphs are kept: the setting (``EMBEDSTREAM_ONNX_CACHE`` where none is passed), else
    ``$XDG_CACHE_HOME`` (or ~/.cache)/embedstream/onnx."""
    setting = setting or os.environ.get("EMBEDSTREAM_ONNX_CACHE", "")
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embedstream" / "onnx"


def transformer_folder(spec: ModelSpec) -> Path:
    """The folder holding the encoder's own weights (a sentence-transformers folder's Transformer module)."""
    root = Path(spec.path)
    modules = modules_of(root, spec.name, {"Transformer", "Pooling", "Dense", "Normalize"})
    return modules[0][1] if modules else root


def unfit(spec: ModelSpec) -> str:
    """Why the onnx engine cannot serve ``spec`` exactly ("" when it can)."""
    if spec.family != "text-dense" or spec.device != "cpu" or spec.dtype != "float32":
        return "the onnx engine serves text-dense models on cpu in float32 only"
    if spec.outputs not in ((), ("dense",)) or spec.instruction:
        return "several outputs and decoder instructions run on torch"
    if spec.path.startswith(HUB_SCHEME) or not Path(spec.path).is_dir():
        return f"{spec.path} is not a local folder"
    if is_m3(spec.path):
        return "BGE-M3's heads run on torch"
    if importlib.util.find_spec("onnxruntime") is None:
        return "the onnxruntime package is not installed"
    root = Path(spec.path)
    try:
        modules = modules_of(root, spec.name, {"Transformer", "Pooling", "Normalize"})
    except ConfigError as exc:
        return str(exc)
    if modules:
        pooling = read_json_optional(modules[[k for k, _ in modules].index("Pooling")][1] / "config.json")
        try:
            mode = pooling_mode(pooling, spec.name)
        except ConfigError as exc:
            return str(exc)
        if not pooling.get("include_prompt", True):
            return "pooling without the prompt's tokens runs on torch"
    else:
        mode = ""
    config = read_json_optional(transformer_folder(spec) / "config.json")
    architecture = str(config.get("model_type", ""))
    if architecture not in ARCHITECTURES:
        return f"architecture {architecture or '?'} is not one of {list(ARCHITECTURES)}"
    mode = mode or spec.pooling or conventions.of(architecture).pooling
    if mode not in POOLINGS:
        return f"pooling {mode} runs on torch"
    return ""


def graph(spec: ModelSpec, cache: str = "") -> Path:
    """The verified graph of ``spec``'s encoder, exported first where the cache lacks it; ConfigError on failure."""
    folder = transformer_folder(spec)
    path = cache_folder(cache) / f"{_key(folder)}.onnx"  # by contents: models of the same weights share it
    if path.exists():
        return path
    log.info("exporting %s to ONNX (once per model folder) into %s", spec.name, path)
    if sys.modules.get("torch") is not None:  # a process that has torch anyway exports it itself
        from embedstream.workers import onnxexport

        try:
            log.info("%s", onnxexport.report(folder, path, onnxexport.export(spec.name, str(folder), path)))
        except Exception as exc:
            raise ConfigError(f"model {spec.name}: the ONNX export failed: {type(exc).__name__}: {exc}") from None
        return path
    command = [sys.executable, "-m", "embedstream.workers.onnxexport", spec.name, str(folder), str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"model {spec.name}: the ONNX export took over {EXPORT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not path.exists():
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise ConfigError(f"model {spec.name}: the ONNX export failed: {reason}")
    log.info("%s", done.stdout.strip())
    return path


def resolve(spec: ModelSpec, cache: str = "") -> ModelSpec:
    """``spec`` with the engine it will run on ("onnx" with its graph ready, or "torch")."""
    if spec.engine == "torch":
        return spec
    reason, failed = unfit(spec), False
    if not reason:
        try:
            graph(spec, cache)
            return dataclasses.replace(spec, engine="onnx")
        except ConfigError as exc:
            reason, failed = str(exc), True
    if spec.engine == "onnx":
        raise ConfigError(f"model {spec.name}: engine onnx cannot serve it: {reason}")
    # A model the engine does not take is as it should be; a failed export (a read-only cache
    # folder, an architecture that traces wrong) costs speed an operator should hear of.
    (log.warning if failed else log.info)("model %s runs on torch (%s)", spec.name, reason)
    return dataclasses.replace(spec, engine="torch")


def _key(folder: Path) -> str:
    """A digest of what the graph depends on: the contents of the folder's weights and config (wherever
    the folder lies: copies share a graph), the exporter's versions. ~0.2 s per 100 MB of weights, read once
    per process while the files' sizes and times stay (a worker's start asks three times: main, loader, model)."""
    files = tuple(
        (file, file.stat().st_size, file.stat().st_mtime_ns)
        for file in sorted(folder.iterdir())
        if file.is_file() and (file.suffix in (".safetensors", ".bin") or file.name == "config.json")
    )
    return _digest(files)


@functools.cache
def _digest(files: tuple[tuple[Path, int, int], ...]) -> str:
    digest = hashlib.sha256(f"{RECIPE}".encode())
    for package in ("torch", "transformers", "onnx"):
        try:
            digest.update(f"|{package}={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"|{package}=none".encode())
    for file, size, _ in files:
        digest.update(f"|{file.name}:{size}:".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class Network:
    """An exported graph in an ONNX Runtime session, standing where a transformers model would."""

    def __init__(self, path: Path, folder: Path, threads: int) -> None:
        import onnxruntime as ort
        import transformers

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Threads that finish early sleep instead of spinning: the gateway and Redis share these cores,
        # and ONNX Runtime's pool hands a descheduled thread's share to the others (no barrier cliff).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = transformers.AutoConfig.from_pretrained(str(folder))

    def get_input_embeddings(self) -> Any:
        """What :func:`embedstream.workers.vocabulary.size_of` reads: the embedding's rows."""
        return SimpleNamespace(num_embeddings=int(self.config.vocab_size))

    def hidden(self, feeds: dict[str, Any]) -> Any:
        """The last hidden state of a padded batch (numpy arrays by input name)."""
        return self.session.run(["last_hidden_state"], {n: feeds[n] for n in self.inputs})[0]
