"""Sections and tables of the Markdown documents that tests hold the code to (README.md, docs/*.md).

Every reader takes the document as a parameter, so a table that moves to a page under docs/
needs one changed argument in the test that reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _level(line: str) -> int:
    """The heading level of a Markdown line (0: not a heading)."""
    found = re.match(r"(#{1,6}) ", line)
    return len(found.group(1)) if found else 0


def section(heading: str, doc: Path = README) -> str:
    """The text under the line ``heading`` (such as ``"## Deploy"``) up to the next heading of its
    level or above; lines inside fenced code blocks (shell comments) are never headings."""
    level, lines, inside, fenced = _level(heading), [], False, False
    for line in doc.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and inside and 0 < _level(line) <= level:
            break
        elif not fenced and line == heading:
            inside = True
            continue
        if inside:
            lines.append(line)
    assert inside, f"{doc.name} has no heading {heading!r}"
    return "\n".join(lines)


def table(heading: str, doc: Path = README) -> list[list[str]]:
    """The body rows of the first table under ``heading``, before any subheading, as lists of cells."""
    rows: list[list[str]] = []
    fenced = False
    for line in section(heading, doc).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            continue
        elif _level(line):
            break
        elif line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r} in {doc.name}"
    return rows[2:]  # past the header row and the |---| row


DOCUMENTS = [README, *sorted(DOCS.glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its info string's words, and its text."""

    doc: Path
    line: int  # of the opening fence, 1-based
    info: tuple[str, ...]
    code: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def lang(self) -> str:
        return self.info[0] if self.info else ""

    @property
    def runnable(self) -> bool:
        return "runnable" in self.info[1:]


def blocks(doc: Path = README) -> list[Block]:
    """Every fenced code block of ``doc``, in order."""
    found, opened, info, code = [], 0, (), []
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        if not opened and line.startswith("```"):
            opened, info, code = number, tuple(line[3:].split()), []
        elif opened and line.startswith("```"):
            found.append(Block(doc, opened, info, "\n".join(code) + "\n"))
            opened = 0
        elif opened:
            code.append(line)
    assert not opened, f"{doc.name}:{opened}: a code block is never closed"
    return found
