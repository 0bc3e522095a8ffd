"""Read local documents into text and cut the text into overlapping chunks for retrieval.

Formats: .txt .rst (plain text), .md .markdown (one unit per section), .html .htm (text outside script/style),
.pdf (pypdf, one unit per page), .docx (the paragraphs of word/document.xml), .csv (one unit per row,
"column: value"), .jsonl (one unit per line: its text/content field, else "key: value" pairs).
A chunk remembers its file and its page, row, line or section.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

from finetune.extras import require

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
SUFFIXES = TEXT_SUFFIXES | {".html", ".htm", ".pdf", ".docx", ".csv", ".jsonl"}


@dataclass(frozen=True)
class Unit:
    """A piece of a document as read: the whole text file, one PDF page, one CSV row, one JSONL line."""

    text: str
    location: str = ""  # "page 3", "row 12", "line 7"; "" for a whole file


@dataclass(frozen=True)
class Chunk:
    text: str
    source: str  # the file's path
    location: str
    index: int  # the chunk's number within its file


def find_documents(paths: list[str]) -> list[Path]:
    """The supported files under `paths` (files or folders, searched recursively), sorted. Raises if none."""
    found: list[Path] = []
    for p in map(lambda s: Path(s).expanduser(), paths):
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in SUFFIXES]
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise ValueError(f"retrieval: {p} has an unsupported type; supported: {sorted(SUFFIXES)}")
            found.append(p)
        else:
            raise FileNotFoundError(f"retrieval input_path: no such file or folder {p}")
    if not found:
        raise ValueError(f"retrieval: no documents of a supported type ({sorted(SUFFIXES)}) under {paths}")
    return sorted({f.resolve() for f in found})


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_units(path: Path) -> list[Unit]:
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return markdown_units(path.read_text(encoding="utf-8", errors="replace"), path.stem)
    if suffix in TEXT_SUFFIXES:
        return [Unit(path.read_text(encoding="utf-8", errors="replace"))]
    if suffix in (".html", ".htm"):
        return [Unit(html_text(path.read_text(encoding="utf-8", errors="replace")))]
    if suffix == ".pdf":
        return pdf_units(path)
    if suffix == ".docx":
        return [Unit(docx_text(path))]
    if suffix == ".csv":
        return csv_units(path)
    if suffix == ".jsonl":
        return jsonl_units(path)
    raise ValueError(f"retrieval: unsupported document type {path.suffix!r} ({path})")


def markdown_units(text: str, name: str = "") -> list[Unit]:
    """One unit per section, written "Title, Section: body" on one line without markup: a chunk then holds one
    topic and says what it is about (the 135M default model answers from such a chunk, not from raw markdown)."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        if line.startswith("#") and line.lstrip("#").startswith(" "):
            sections.append((line.lstrip("#").strip(), []))
        elif line.strip():
            sections[-1][1].append(line.strip())
    title = next((h for h, _ in sections if h), name)
    units = []
    for heading, lines in sections:
        if not lines:
            continue
        label = title if heading in ("", title) else f"{title}, {heading}"
        body = " ".join(lines)
        units.append(Unit(f"{label}: {body}" if label else body, f"section {heading}" if heading else ""))
    return units


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "head", "noscript", "template"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table", "pre"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def pdf_units(path: Path) -> list[Unit]:
    reader = require("pypdf", f"Reading {path}").PdfReader(str(path))
    return [Unit(page.extract_text() or "", f"page {i}") for i, page in enumerate(reader.pages, 1)]


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_text(path: Path) -> str:
    """The paragraphs of a .docx (tables included, in document order), read from its XML with the stdlib."""
    try:
        with zipfile.ZipFile(path) as z:
            root = ElementTree.fromstring(z.read("word/document.xml"))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as err:
        raise ValueError(f"retrieval: {path} is not a readable .docx file: {err}") from err
    paragraphs = []
    for p in root.iter(f"{_W}p"):
        text = "".join(
            (node.text or "") if node.tag == f"{_W}t" else "\t"
            for node in p.iter()
            if node.tag in (f"{_W}t", f"{_W}tab")
        )
        if text.strip():
            paragraphs.append(text)
    return "\n".join(paragraphs)


def csv_units(path: Path) -> list[Unit]:
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.DictReader(f))
    units = []
    for i, row in enumerate(rows, 1):
        text = "; ".join(f"{k}: {v}" for k, v in row.items() if k and v not in (None, ""))
        if text:
            units.append(Unit(text, f"row {i}"))
    return units


def jsonl_units(path: Path) -> list[Unit]:
    units = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ValueError(f"retrieval: {path} line {i} is not JSON: {err}") from err
        units.append(Unit(_record_text(record), f"line {i}"))
    return [u for u in units if u.text.strip()]


def _record_text(record) -> str:
    if isinstance(record, dict):
        for key in ("text", "content", "page_content", "doc"):
            if isinstance(record.get(key), str):
                return record[key]
        return "; ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in record.items())
    return record if isinstance(record, str) else json.dumps(record)


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """Chunks of at most `size` characters, cut at paragraph, then sentence, then word boundaries where possible;
    consecutive chunks share about `overlap` characters."""
    text = text.strip()
    if len(text) <= size:
        return [text] if text else []
    chunks, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                at = window.rfind(sep)
                if at > size // 2:
                    end = start + at + len(sep)
                    break
        chunk = text[start:end].strip()
        if chunk:
            chunks.append(chunk)
        if end >= len(text):
            break
        nxt = max(end - overlap, start + 1)
        space = text.find(" ", nxt, end)  # start the overlap on a word
        start = space + 1 if overlap and space != -1 else nxt
    return chunks


def chunk_file(path: Path, size: int, overlap: int) -> Iterator[Chunk]:
    index = 0
    for unit in read_units(path):
        for piece in split_text(unit.text, size, overlap):
            yield Chunk(piece, str(path), unit.location, index)
            index += 1
