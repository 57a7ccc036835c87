"""docs/models.md: every family row names a conformance test that exists."""

from __future__ import annotations

import re

from tests.support import ROOT
from tests.support.documents import table

MODELS = ROOT / "docs" / "models.md"


def test_every_row_of_docs_models_names_an_existing_test() -> None:
    rows = table("## Families", MODELS)
    assert len(rows) >= 7
    for row in rows:
        tests = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", row[-1])
        assert tests, f"docs/models.md row {row[0]!r} names no test"
        for path, name in tests:
            source = (ROOT / path).read_text()
            assert f"def {name}(" in source, f"docs/models.md row {row[0]!r}: {path} has no {name}"


def test_the_readme_links_docs_models() -> None:
    assert "(docs/models.md)" in (ROOT / "README.md").read_text()
