"""A disk cache of a built-in source's cleaned documents.

Parsing and cleaning gensim's Wikipedia dump takes seconds at every run start, on every DDP rank and in every
training run the tests launch. The entry is JSON, read as data and checked for shape; its name hashes everything
the documents depend on (the source file's bytes, the cleaning code, the parser's version), so an edit to any of
them builds a new entry rather than serving a stale one. An unreadable or malformed entry is rebuilt; a cache
folder that cannot be written only costs the speed-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

Pairs = list[tuple[str, str]]  # (title, text) per document


def entry_path(cache_dir: Path, name: str, inputs: Iterable[bytes]) -> Path:
    h = hashlib.sha256()
    for part in inputs:
        h.update(hashlib.sha256(part).digest())
    return Path(cache_dir).expanduser() / "documents" / f"{name}-{h.hexdigest()[:16]}.json"


def cached_pairs(cache_dir: Path, name: str, inputs: Iterable[bytes], build: Callable[[], Pairs]) -> Pairs:
    """``build()``'s (title, text) pairs, from the entry keyed by ``inputs`` when it exists and is well formed."""
    path = entry_path(cache_dir, name, inputs)
    pairs = _read(path)
    if pairs is None:
        pairs = build()
        _write(path, pairs)
    return pairs


def _read(path: Path) -> Pairs | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        log.warning("document cache %s unreadable (%s); rebuilding it", path, exc)
        return None
    if not (isinstance(data, list) and all(isinstance(p, list) and len(p) == 2
                                           and all(isinstance(s, str) for s in p) for p in data)):
        log.warning("document cache %s is not a list of [title, text] pairs; rebuilding it", path)
        return None
    return [(title, text) for title, text in data]


def _write(path: Path, pairs: Pairs) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps([list(p) for p in pairs]), encoding="utf-8")
        os.replace(tmp, path)  # atomic: ranks writing at once each leave a whole entry
    except OSError as exc:
        log.warning("document cache %s not written (%s); the next run parses the source again", path, exc)
        with contextlib.suppress(OSError):  # e.g. the folder is a file: there is no tmp to remove
            tmp.unlink()
