"""Knowledge bases: folders of documents. A document's id is its path inside the
folder without the extension (`products/vantor-x40`), the id that `context_ids`
in the data refer to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UserError, read_utf8

DOC_SUFFIXES = {".md", ".markdown", ".txt", ".rst"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass
class KnowledgeBase:
    name: str
    documents: list[Document]
    source: str = ""  # where the documents come from (a folder, a loader): the index kept in step with them

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for d in sorted(self.documents, key=lambda d: d.id):
            h.update(d.id.encode() + b"\x00" + d.text.encode() + b"\x01")
        return h.hexdigest()[:16]

    def by_id(self) -> dict[str, Document]:
        return {d.id: d for d in self.documents}


def read_knowledge_base(folder: Path, *, field: str = "knowledge_base", suite_path: Path | None = None) -> KnowledgeBase:
    if not folder.is_dir():
        what = "is a file, not a folder of documents" if folder.exists() else "folder not found"
        raise UserError(f"knowledge base {what}: {folder}", file=suite_path, field=field)
    docs, where = [], {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in DOC_SUFFIXES:
            text = read_utf8(p, "knowledge-base document").strip()
            doc_id = p.relative_to(folder).with_suffix("").as_posix()
            if doc_id in where:  # a.md and a.txt: one document id, two texts
                raise UserError(f"{where[doc_id].name} and {p.name} are both document '{doc_id}' (the id is the path "
                                "without its extension): rename one", file=p, field=field)
            where[doc_id] = p
            if text:
                docs.append(Document(id=doc_id, text=text))
    if not docs:
        raise UserError(f"knowledge base is empty: no non-empty {'/'.join(sorted(DOC_SUFFIXES))} files in {folder}",
                        file=suite_path, field=field)
    return KnowledgeBase(name=folder.name, documents=docs, source=str(folder.resolve()))
