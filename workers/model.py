"""The models a worker runs, behind one small interface: tokenize, then forward.

Every family turns a list of sources (a text, an encoded image, token ids, or
a (query, document) pair for rerankers) into :class:`Tokens` on the prep thread,
and a batch of Tokens into outputs on the model thread. What ``forward``
returns depends on the family's ``output``:

* ``dense``: an array (batch, dimensions), one vector per input;
* ``multi``: a list with one (tokens, dimensions) array per input;
* ``sparse``: a list with one (indices, weights) pair per input;
* ``score``: an array (batch, 1) of relevance scores;
* ``labels``: an array (batch, labels) of a classifier's logits;
* ``outputs``: a list with one {output name: value} dict per input, for models
  of several outputs (BGE-M3); ``outputs`` names them, primary first, and
  ``output_dimensions`` gives each one's width.

The families live in their own modules and :func:`embedstream.workers.loader.load`
picks one from the registry. The debug model (:mod:`embedstream.workers.debug`)
gives vectors from a hash of the text at zero compute cost: the pipeline's own ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from embedstream.workers.vocabulary import Vocabulary

#: What one input is before tokenization: a text, an encoded image, a (query, document)
#: pair, or token ids (taken as given).
Source = str | bytes | tuple[str, str] | list[int]


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
    #: The Matryoshka size the request asked for (0 = full): Nomic Embed layer-normalizes before the cut.
    dimensions: int = 0
    #: Leading tokens that are the prompt, for models that pool without them (``include_prompt: false``).
    prompt_tokens: int = 0
    #: The prompt name the request selected ("" = none): Jina v3 runs the task adapter of that name.
    prompt: str = ""


class Model(Protocol):
    """What the batcher needs from any model family."""

    name: str
    family: str
    output: str
    dimensions: int
    max_input_tokens: int
    normalizes: bool
    #: The model's tokenizer (Tokenize, Decode, token-id inputs); None where it has no
    #: Hugging Face fast tokenizer (open_clip, debug).
    vocabulary: Vocabulary | None

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Prepare inputs (tokenize, decode images), cut at ``max_input_tokens`` on ``side``
        ("right" keeps the start, "left" the end); runs on the prep thread."""
        ...

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> Any:
        """The batch's outputs (see the module docstring); runs on the model thread."""
        ...
