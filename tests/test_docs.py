"""Docs that must follow the code: the module map, links, and every shell and python block runnable or
saying why not (tests/test_docs_run.py runs the runnable ones)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import ROOT, documents
from tests.support.documents import DOCUMENTS

#: The first line of a block that cannot run here says why; one that another test runs names it.
NOT_RUNNABLE = re.compile(r"# not runnable( here)?: \S")
RUN_BY = re.compile(r"# run by (tests/\S+\.py)")

BLOCKS = [block for doc in DOCUMENTS for block in documents.blocks(doc)]
SHELL = [b for b in BLOCKS if b.lang == "sh" and b.runnable]
PYTHON_PAGES = sorted({b.doc for b in BLOCKS if b.lang == "python" and b.runnable})


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


def test_every_shell_and_python_block_runs_or_says_why_not() -> None:
    for block in BLOCKS:
        assert block.lang not in ("bash", "shell", "console", "py", "python3"), f"{block.where}: write sh or python"
        if block.lang not in ("sh", "python") or block.runnable:
            continue
        first = block.code.splitlines()[0] if block.code.strip() else ""
        by = RUN_BY.match(first)
        assert NOT_RUNNABLE.match(first) or by, (
            f"{block.where}: mark it `{block.lang} runnable`, or say on its first line why not "
            "(`# not runnable: <reason>`) or which test runs it (`# run by tests/<file>.py`)"
        )
        assert by is None or (ROOT / by.group(1)).is_file(), f"{block.where}: {by and by.group(1)} does not exist"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.*)$", text, flags=re.M)}


def test_every_relative_link_and_anchor_resolves() -> None:
    for doc in DOCUMENTS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            page = (doc.parent / path).resolve() if path else doc
            assert page.exists(), f"{doc.name}: link to {target}: no such file"
            if anchor and page.suffix == ".md":
                assert anchor in _anchors(page), f"{doc.name}: link to {target}: no such heading"
