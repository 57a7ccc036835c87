"""Export a transformer encoder to ONNX for the onnx engine, verified against torch, in a process of its own.

``python -m embedstream.workers.onnxexport NAME FOLDER OUT`` loads FOLDER's encoder
with torch (strictly: :mod:`embedstream.workers.strict`), exports its last hidden
state with the batch and sequence axes left free, then runs the graph in ONNX
Runtime beside torch on batches of every shape the export example did not have
(one short text alone, texts of very different lengths padded together, one cut
at the model's limit). OUT is written, atomically, only where every real token's
hidden state agrees within :data:`TOLERANCE`; otherwise the process exits 2 with
the largest difference. It runs apart from the worker so the worker never imports
torch (~500 MiB of it) to serve a graph.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: Largest absolute difference allowed between a torch and an ONNX Runtime hidden state (float32).
TOLERANCE = 1e-4
#: Texts of very different lengths: the export example has two, padded; these make other shapes.
PROBES = (
    "hi",
    "The engine is checked on texts of very different lengths, padded together in one batch.",
    "A longer text that must be cut at the model's input limit, so the graph runs at its widest. " * 40,
)
#: What the export example is: two inputs of different lengths, so the padding path is traced.
EXAMPLE = ("an example input", "a second, longer example input that pads the first one")


def export(name: str, folder: str, out: Path) -> float:
    """Export and verify; write ``out`` and return the largest difference, or raise ValueError."""
    import torch
    import transformers

    from embedstream.workers import strict

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = strict.pretrained("AutoModel", folder, name, dtype=torch.float32).eval()
    names = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else []
    )
    limit = min(int(tokenizer.model_max_length), int(getattr(model.config, "max_position_embeddings", 512)), 512)

    def inputs(texts: tuple[str, ...] | list[str]) -> dict[str, Any]:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {n: enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in names}

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    example = inputs(EXAMPLE)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # The exporter puts the module back in the mode it found it in, recursively: a wrapper left in
        # training mode would switch the encoder's dropout on for the comparison below.
        # The tracer warns where Python branches on shapes; the check below runs other shapes instead.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Hidden().eval(),
                tuple(example[n] for n in names),
                tmp,
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        worst = _verify(tmp, model.eval(), inputs, names)
        if worst > TOLERANCE:
            raise ValueError(f"the exported graph differs from torch by {worst:.2e} (allowed {TOLERANCE:.0e})")
        os.replace(tmp, out)
        return worst
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _verify(graph: str, model: Any, inputs: Any, names: list[str]) -> float:
    """The largest difference over real tokens between torch and the graph, on shapes the export never saw."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for texts in ([PROBES[0]], list(PROBES), [PROBES[2], PROBES[1]], [PROBES[1]] * 3):
        feed = inputs(texts)
        with torch.inference_mode():
            expected = model(**feed).last_hidden_state.float().numpy()
        got = session.run(["last_hidden_state"], {n: feed[n].numpy() for n in names})[0]
        real = feed["attention_mask"].numpy().astype(bool)
        if got.shape != expected.shape:
            raise ValueError(f"the exported graph gives shape {got.shape} where torch gives {expected.shape}")
        worst = max(worst, float(np.abs(got - expected)[real].max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("folder")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        worst = export(args.name, args.folder, args.out)
    except Exception as exc:  # every failure is reported to the worker the same way: the reason, exit 2
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report(args.folder, args.out, worst))
    return 0


def report(folder: str | Path, out: Path, worst: float) -> str:
    """The line an export logs."""
    return f"exported {folder} to {out}: largest difference from torch {worst:.2e}"


if __name__ == "__main__":
    sys.exit(main())
