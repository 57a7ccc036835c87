"""`embedstream inspect FOLDER` prints how a folder would be served, or refuses it (exit 2) with the
reason its worker would give, without Redis or a gateway."""

from __future__ import annotations

import os

from tests.support import familymodels as fm
from tests.support.conformance import FamilyModels
from tests.support.processes import cli


def test_inspect_prints_how_a_folder_is_served_or_refuses_it(family_models: FamilyModels) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")} | {"EMBEDSTREAM_THREADS": "1"}
    qwen3 = family_models.get("qwen3-embedding", lambda d: fm.decoder(d, "qwen3"))
    done = cli("inspect", str(qwen3), "--instruction", "Find the answer", env=env)
    assert done.returncode == 0, done.stderr
    facts = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert facts["family"] == "text-dense" and facts["loader"] == "sentence-transformers"
    assert (facts["architecture"], facts["pooling"], facts["padding"]) == ("qwen3", "lasttoken", "left")
    assert facts["normalizes"] == "yes" and facts["heads"] == "Normalize" and facts["max input tokens"] == "256"
    assert "query='Instruct: Find the answer\\nQuery:'" in facts["prompts"]
    assert facts["self-test"].startswith("passed")

    nomic = family_models.get("nomic", fm.nomic)
    facts = dict(line.split(": ", 1) for line in cli("inspect", str(nomic), env=env).stdout.splitlines())
    assert "search_query='search_query: '" in facts["prompts"] and "layer norm" not in facts["matryoshka dimensions"]
    assert facts["input types select"] == "query=search_query document=search_document default=-"

    refused = cli("inspect", str(family_models.get("bge-m3-like", fm.xlm_roberta)), "--family", "sparse", env=env)
    assert refused.returncode == 2
    assert "XLMRobertaForMaskedLM" in refused.stderr and "missing weights lm_head" in refused.stderr
