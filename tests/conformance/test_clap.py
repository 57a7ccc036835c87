"""CLAP (transformers ClapModel + ClapProcessor), loaded through the worker's own loader, equals the
reference on the same windows: ``get_audio_features`` per window, ``get_text_features`` per text, for the
unfused and the fused checkpoint layouts. Windows never exceed the extractor's 10 s, so its random crop
of longer clips never runs and the vectors are deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstream import media, mediawire, wire
from embedstream.registry import ModelSpec
from embedstream.workers import media as worker_media
from embedstream.workers.loader import load
from tests.support import media as clips
from tests.support import mediaref, tinymodels
from tests.support.conformance import TEXTS, TOLERANCE

RATE = 48000
BUDGET = worker_media.Budget(media.Limits(1 << 30, 3600), media.Limits(1 << 30, 3600), 64)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_clap_windows_and_texts_equal_clap_model(tmp_path: Path, fused: bool) -> None:
    folder = tinymodels.clap_model(tmp_path / "clap", fused=fused)
    model = load(ModelSpec(name="clap", family="audio-text", path=str(folder)), threads=1)
    assert (model.sample_rate, model.window_s, model.dimensions) == (RATE, 10.0, 16)
    samples = clips.tones([(6.0, 440), (9.0, 880), (10.0, 523)], RATE)  # 25 s: three 10 s windows
    data = clips.audio(samples, RATE, "wav")
    opts = mediawire.Media(output="both")
    job = wire.Job("c", "", 0, 0, [data, *TEXTS], kinds="a" + "t" * len(TEXTS), media=opts)
    tokens, layout, error = worker_media.prepare(model, job, job.inputs, BUDGET)
    assert error is None and layout is not None
    outputs = model.forward(tokens, [True] * len(tokens))
    got = np.stack(worker_media.pool(list(outputs), layout, 0, True))
    decoded = mediaref.decoded_mono(data, RATE)
    windows = mediaref.windows(decoded, RATE, 10.0, 2.5)
    assert windows == [(0.0, 10.0), (7.5, 17.5), (15.0, 25.0)]
    assert [(p.segment.start_s, p.segment.end_s, p.segment.pooled) for p in layout.pieces[:4]] == [
        (0.0, 10.0, False),
        (7.5, 17.5, False),
        (15.0, 25.0, False),
        (0.0, 25.0, True),
    ]
    audio = mediaref.clap_audio(folder, decoded, RATE, windows)
    texts = np.concatenate([mediaref.clap_texts(folder, [t]) for t in TEXTS])
    expected = np.concatenate([audio, mediaref.mean_of(audio)[None], texts])
    diff = float(np.abs(got - expected).max())
    print(f"CONFORMANCE clap ({'fused' if fused else 'unfused'}): max abs diff {diff:.2e}")
    assert diff <= TOLERANCE
    # Texts batched together (padded to each other) give the same vectors as alone.
    batched = model.forward(tokens[-len(TEXTS) :], [True] * len(TEXTS))
    assert np.abs(batched - texts).max() <= TOLERANCE
