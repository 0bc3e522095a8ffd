"""The retrieval plugin: index local documents in a LanceDB table and find the chunks nearest a question.

The index is kept up to date: each build re-embeds only the files whose content changed, drops the chunks of
files that were removed, and rebuilds everything if the embedding model changed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.extras import require
from finetune.home import retrieval_index_dir
from neural_chat_app.plugins.documents import chunk_file, file_hash, find_documents
from neural_chat_app.plugins.embedding import load_embedder
from neural_chat_app.plugins.settings import RetrievalArgs

logger = logging.getLogger(__name__)
TABLE = "chunks"
CHUNKER_VERSION = "v1"  # bump when documents.py reads or splits differently


@dataclass(frozen=True)
class Hit:
    text: str
    source: str
    location: str
    score: float  # cosine similarity to the question

    def as_link(self) -> dict:
        return {"source": self.source, "location": self.location, "score": round(self.score, 4), "text": self.text}


def default_persist_directory(paths: list[str]) -> Path:
    key = hashlib.sha256("\n".join(sorted(str(Path(p).expanduser().resolve()) for p in paths)).encode()).hexdigest()
    return retrieval_index_dir(key[:16])


def _connect(folder: Path):
    lancedb = require("lancedb", "The retrieval plugin's index")
    folder.mkdir(parents=True, exist_ok=True)
    return lancedb.connect(str(folder))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Retriever:
    def __init__(self, args: RetrievalArgs):
        self.args = args
        self.embedder = load_embedder(args.embedding_model)
        model = str(getattr(self.embedder, "name", type(self.embedder).__name__))
        # What the stored vectors depend on: a change of any of these re-indexes everything.
        self.signature = f"{model}|chunks {args.chunk_size}/{args.chunk_overlap}|{CHUNKER_VERSION}"
        self.folder = (
            Path(args.persist_directory).expanduser()
            if args.persist_directory
            else (default_persist_directory(args.paths))
        )
        self.db = _connect(self.folder)
        self.table = None
        self.stats = self.sync()

    def _indexed(self) -> dict[str, tuple[str, str]]:
        """{source: (file_hash, signature)} of what the table holds now."""
        rows = self.table.search().select(["source", "file_hash", "model"]).limit(None).to_list()
        return {r["source"]: (r["file_hash"], r["model"]) for r in rows}

    def sync(self) -> dict:
        """Bring the index in line with the documents; return counts of files added, kept and removed."""
        files = {str(p): p for p in find_documents(self.args.paths)}
        hashes = {s: file_hash(p) for s, p in files.items()}
        if TABLE in self.db.table_names():
            self.table = self.db.open_table(TABLE)
            indexed = self._indexed()
            if any(signature != self.signature for _, signature in indexed.values()):
                logger.info("retrieval: the embedding model or chunking changed; rebuilding %s", self.folder)
                self.db.drop_table(TABLE)
                self.table, indexed = None, {}
        else:
            indexed = {}
        stale = [s for s, (h, _) in indexed.items() if hashes.get(s) != h]
        if stale and self.table is not None:
            self.table.delete(f"source IN ({', '.join(map(_quote, stale))})")
        todo = [s for s in files if s not in indexed or s in stale]
        rows = []
        for source in todo:
            chunks = list(chunk_file(files[source], self.args.chunk_size, self.args.chunk_overlap))
            if not chunks:
                logger.warning("retrieval: %s has no text", source)
                continue
            vectors = np.asarray(self.embedder.embed([c.text for c in chunks]), dtype=np.float32)
            rows += [
                {
                    "vector": v,
                    "text": c.text,
                    "source": c.source,
                    "location": c.location,
                    "chunk": c.index,
                    "file_hash": hashes[source],
                    "model": self.signature,
                }
                for c, v in zip(chunks, vectors, strict=True)
            ]
        if rows:
            if self.table is None:
                self.table = self.db.create_table(TABLE, data=rows)
            else:
                self.table.add(rows)
        if self.table is None:
            raise ValueError(f"retrieval: the documents under {self.args.paths} contain no text to index")
        updated = len([s for s in stale if s in files])
        return {
            "added": len(todo) - updated,
            "updated": updated,
            "removed": len(stale) - updated,
            "kept": len(files) - len(todo),
            "chunks": self.table.count_rows(),
        }

    def search(self, question: str, top_k: int | None = None) -> list[Hit]:
        vector = np.asarray(self.embedder.embed([question]), dtype=np.float32)[0]
        rows = self.table.search(vector).distance_type("cosine").limit(top_k or self.args.top_k).to_list()
        hits = [Hit(r["text"], r["source"], r["location"], 1.0 - float(r["_distance"])) for r in rows]
        return [h for h in hits if h.score >= self.args.min_score]

    def prompt(self, question: str, hits: list[Hit]) -> str:
        context = "\n\n".join(f"[{i}] ({Path(h.source).name}) {h.text}" for i, h in enumerate(hits, 1))
        return self.args.prompt_template.format(context=context, question=question)

    def close(self) -> None:
        self.table = self.db = None
