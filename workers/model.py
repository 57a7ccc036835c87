"""The models a worker runs, behind one small interface: tokenize, then forward.

Every family turns a list of sources (a text, an encoded image, or a
(query, document) pair for rerankers) into :class:`Tokens` on the prep thread,
and a batch of Tokens into outputs on the model thread. What ``forward``
returns depends on the family's ``output``:

* ``dense``: an array (batch, dimensions), one vector per input;
* ``multi``: a list with one (tokens, dimensions) array per input;
* ``sparse``: a list with one (indices, weights) pair per input;
* ``score``: an array (batch, 1) of relevance scores.

The families live in their own modules and :func:`embedstream.workers.loader.load`
picks one from the registry. The debug model (:mod:`embedstream.workers.debug`)
gives vectors from a hash of the text at zero compute cost: the pipeline's own ceiling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from embedstream.errors import ConfigError
from embedstream.registry import HUB_SCHEME, ModelSpec

#: What one input is before tokenization.
Source = str | bytes | tuple[str, str]


@dataclass(slots=True)
class Tokens:
    """One input after preparation: ids (or pixels) for the model, its cost, whether cut."""

    ids: list[int] | None
    length: int
    truncated: bool
    text: str
    #: A preprocessed image tensor, for image inputs.
    pixels: Any = None
    #: Segment ids of a (query, document) pair.
    type_ids: list[int] | None = None
    #: Why this input cannot be embedded (a bad image); the entry fails with it.
    error: str = ""
    #: "query", "document" or "" (counts as a document): multi-vector models encode the two differently.
    task: str = ""


class Model(Protocol):
    """What the batcher needs from any model family."""

    name: str
    family: str
    output: str
    dimensions: int
    max_input_tokens: int
    normalizes: bool

    def tokenize(self, sources: list[Source]) -> list[Tokens]:
        """Prepare inputs (tokenize, decode images), cut at ``max_input_tokens``; runs on the prep thread."""
        ...

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> Any:
        """The batch's outputs (see the module docstring); runs on the model thread."""
        ...


def weights(spec: ModelSpec) -> str:
    """What ``from_pretrained`` takes for the spec's path: a folder (that must exist), or a hub id."""
    if spec.path.startswith(HUB_SCHEME):
        return spec.path[len(HUB_SCHEME) :]
    if not Path(spec.path).is_dir():
        raise ConfigError(f"model {spec.name}: {spec.path} is not a folder")
    return spec.path


def read_json(path: Path, name: str) -> Any:
    """A JSON file of a model folder; errors name the model."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"model {name}: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model {name}: {path} is not JSON: {exc}") from None


def read_json_optional(path: Path) -> dict[str, Any]:
    """A JSON file that may be missing ({} then)."""
    return json.loads(path.read_text()) if path.exists() else {}


def not_text(model: str) -> Tokens:
    """Tokens carrying the error for an input a text model cannot take."""
    return Tokens(None, 1, False, "", error=f"model {model} takes text only")
