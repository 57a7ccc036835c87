"""Video and audio inputs of a queue entry: expanded into frames or windows, pooled back into segments.

An entry holding video or audio becomes one Tokens per text or image and one
per sampled frame (``workers/frames.py``) or audio window
(``workers/sound.py``), so frames batch with every other image (and windows
with every other clip) in the pools. :func:`pool` turns the finished entry's
outputs into its vectors: a text or image its own; a video segment the mean
of its frames; the pooled vector of a clip the mean of all its frames or
windows (each cut and normalized first where asked, the mean re-normalized).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstream import media, mediawire, vectors, wire
from embedstream.errors import Code
from embedstream.mediawire import Segment
from embedstream.workers import chunking, frames, sound
from embedstream.workers.model import Source, Tokens


@dataclass(frozen=True, slots=True)
class Budget:
    """What a worker lets one input become: limits per kind and frames (or windows) per input."""

    video: media.Limits
    audio: media.Limits
    max_frames: int

    @classmethod
    def of(cls, settings: Any) -> Budget:
        """The budget in a worker's settings."""
        return cls(media.limits(settings, "video"), media.limits(settings, "audio"), settings.max_media_frames)


@dataclass(frozen=True, slots=True)
class Piece:
    """One vector of the reply: where it lies, and the rows of the entry's outputs it pools."""

    segment: Segment
    rows: tuple[int, ...]


@dataclass(slots=True)
class Layout:
    """The vectors of one entry, in reply order."""

    pieces: list[Piece]

    def flat(self) -> list[int]:
        """The segments as the reply carries them."""
        return mediawire.flatten([p.segment for p in self.pieces])


Prepared = tuple[list[Tokens], Layout | None, tuple[str, str] | None]


def has_media(job: wire.Job) -> bool:
    """Whether the entry holds video or audio."""
    return any(k in mediawire.MEDIA_KINDS for k in job.kinds)


def prepare_all(
    model: Any, work: Sequence[tuple[wire.Job, list[Source], str]], chunk_limits: tuple[int, int], budget: Budget
) -> list[Prepared | chunking.Prepared]:
    """:func:`prepare` for the entries holding video or audio, ``chunking.prepare`` (one tokenize
    call) for the others; in entry order. Runs on the prep thread."""
    plain = [w for w in work if not has_media(w[0])]
    done = iter(chunking.prepare(model, plain, *chunk_limits) if plain else [])
    return [prepare(model, job, sources, budget) if has_media(job) else next(done) for job, sources, _ in work]


def prepare(model: Any, job: wire.Job, sources: Sequence[Source], budget: Budget) -> Prepared:
    """Tokens for every input of ``job`` (texts and images through ``model.tokenize`` in one call,
    clips expanded), the layout of its vectors, or the error that refuses the entry."""
    plain = [s for s, k in zip(sources, job.kinds) if k not in mediawire.MEDIA_KINDS]
    plain_tokens = iter(model.tokenize(plain) if plain else [])
    tokens: list[Tokens] = []
    pieces: list[Piece] = []
    opts = job.media
    for i, (kind, source) in enumerate(zip(job.kinds, sources)):
        if kind not in mediawire.MEDIA_KINDS:
            tok = next(plain_tokens)
            if tok.error:
                return [], None, (Code.INVALID_ARGUMENT.value, f"inputs[{i}]: {tok.error}")
            pieces.append(Piece(Segment(i, 0, 0.0, 0.0), (len(tokens),)))
            tokens.append(tok)
            continue
        name = mediawire.KINDS[kind]
        try:
            assert isinstance(source, bytes)  # the wire format holds clips as bytes
            segments, prepared, duration = _expand(model, kind, source, opts, budget)
        except media.MediaError as exc:
            return [], None, (Code.INVALID_ARGUMENT.value, f"inputs[{i}].{name}: {exc}")
        first = len(tokens)
        tokens.extend(prepared)
        if opts.output != "pooled":
            for n, (start, end, rows) in enumerate(segments):
                pieces.append(Piece(Segment(i, n, start, end, frames=len(rows)), tuple(first + r for r in rows)))
        if opts.output != "segments":
            whole = Segment(i, len(segments), 0.0, duration, pooled=True, frames=len(prepared))
            pieces.append(Piece(whole, tuple(range(first, len(tokens)))))
    return tokens, Layout(pieces), None


def _expand(
    model: Any, kind: str, data: bytes, opts: mediawire.Media, budget: Budget
) -> tuple[list[tuple[float, float, list[int]]], list[Tokens], float]:
    """(segments as (start, end, rows), the Tokens of its frames or windows, duration) of one clip."""
    if kind == "v":
        prepare_frame = getattr(model, "prepare_frame", None)
        if prepare_frame is None:
            raise media.MediaError(f"model {model.name} takes no video")
        sampled = frames.sample(
            data,
            budget.video,
            prepare_frame,
            opts.frame_interval_s or mediawire.FRAME_INTERVAL_S,
            opts.scenes,
            opts.scene_threshold or mediawire.SCENE_THRESHOLD,
            budget.max_frames,
        )
        return sampled.segments, sampled.frames, sampled.duration_s
    prepare_window = getattr(model, "prepare_window", None)
    if prepare_window is None:
        raise media.MediaError(f"model {model.name} takes no audio")
    window = opts.window_s or model.window_s
    if window > model.window_s + 1e-9:
        raise media.MediaError(f"media.window_s {window:g} exceeds the {model.window_s:g} s model {model.name} hears")
    overlap = opts.overlap_s if opts.overlap_s >= 0 else window / 4
    if overlap >= window:
        raise media.MediaError(f"media.overlap_s {overlap:g} is not shorter than the window ({window:g} s)")
    cut = sound.windows(data, budget.audio, model.sample_rate, window, overlap, prepare_window, budget.max_frames)
    segments = [(start, end, [n]) for n, (start, end) in enumerate(cut.spans)]
    return segments, cut.prepared, cut.duration_s


def pool(results: list[Any], layout: Layout, dimensions: int, normalize: bool) -> list[np.ndarray]:
    """One vector per piece: the mean of its rows, each cut (Matryoshka) and normalized where asked,
    the mean re-normalized when normalizing; a piece of one row is that row, cut."""
    out = []
    for piece in layout.pieces:
        rows = vectors.truncate(np.stack([results[r] for r in piece.rows]), dimensions, normalize)
        if len(piece.rows) == 1:
            out.append(rows[0].astype(np.float32))
            continue
        mean = rows.astype(np.float32).mean(axis=0)
        if normalize:
            mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        out.append(mean.astype(np.float32))
    return out
