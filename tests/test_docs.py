"""Docs that must follow the code."""

from __future__ import annotations

import re

from tests.support import ROOT


def test_the_architecture_page_names_every_module_in_its_folders_table() -> None:
    page = (ROOT / "docs/architecture.md").read_text()
    tables = dict(re.findall(r"^### `([\w/]+)/`[^\n]*\n(.*?)(?=^### |\Z)", page, flags=re.M | re.S))
    where = {"embedstream": ROOT / "embedstream", "gateway": ROOT / "gateway", "workers": ROOT / "workers"}
    for name, folder in where.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).as_posix()
            if rel.startswith("v1/") or (name != "embedstream" and rel == "__init__.py"):
                continue
            # A subpackage of embedstream/ (client/, evaluation/) has a table of its own.
            table = f"embedstream/{rel.split('/')[0]}" if name == "embedstream" and "/" in rel else name
            assert f"| `{rel}` |" in tables.get(table, ""), f"docs/architecture.md: {name}/{rel} is not in its table"
