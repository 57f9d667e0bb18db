"""Writes a benchmark's section of docs/benchmarks.md: the text between its two marker
comments is replaced (or the section is appended when the markers are not there yet)."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(text: str, markers: tuple[str, str], path: Path = DOCS) -> None:
    doc = path.read_text(encoding="utf-8")
    start, end = markers
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc, encoding="utf-8")
