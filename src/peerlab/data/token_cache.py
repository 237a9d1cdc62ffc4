"""Tokenized splits cached on disk as flat ``uint16``/``uint32`` token files plus a manifest.

A cache entry is a folder named by the corpus and tokenizer fingerprints, built in a temporary folder and renamed
into place, so a killed build never leaves a half-written entry. On load the manifest's token counts and SHA-256
hashes are checked; a mismatch (truncated or altered file) rebuilds the entry instead of training on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from peerlab.data.tokenizer import eot_id, tokenizer_hash

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def encode_documents(tok: Tokenizer, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Token ids of all documents, each followed by the end-of-text token (documents are packed across blocks)."""
    eot = eot_id(tok)
    dtype = token_dtype(tok.get_vocab_size())
    parts = []
    for start in range(0, len(texts), batch_size):
        for enc in tok.encode_batch(list(texts[start : start + batch_size])):
            parts.append(np.asarray(enc.ids + [eot], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def entry_dir(cache_dir: Path, corpus_key: str, tok: Tokenizer) -> Path:
    return cache_dir / "tokens" / f"{corpus_key}-{tokenizer_hash(tok)}"


def verify(entry: Path, tok: Tokenizer) -> dict | None:
    """The manifest if ``entry`` is complete and intact for ``tok``, else ``None``."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT_VERSION or manifest.get("tokenizer") != tokenizer_hash(tok):
        return None
    dtype = np.dtype(manifest["dtype"])
    for split, info in manifest["splits"].items():
        path = entry / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != info["tokens"] * dtype.itemsize:
            return None
        if _sha256(path) != info["sha256"]:
            return None
    return manifest


def build(entry: Path, tok: Tokenizer, splits: dict[str, Sequence[str]], meta: dict) -> dict:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        dtype = token_dtype(tok.get_vocab_size())
        manifest = {"format": FORMAT_VERSION, "tokenizer": tokenizer_hash(tok), "dtype": dtype.name, "splits": {}, **meta}
        for split, texts in splits.items():
            ids = encode_documents(tok, texts)
            if len(ids) == 0:
                raise ValueError(f"data: the {split} split has no tokens")
            ids.tofile(tmp / f"{split}.bin")
            manifest["splits"][split] = {
                "documents": len(texts),
                "characters": sum(len(t) for t in texts),
                "tokens": int(len(ids)),
                "sha256": _sha256(tmp / f"{split}.bin"),
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_split(entry: Path, manifest: dict, split: str) -> np.memmap:
    return np.memmap(entry / f"{split}.bin", dtype=np.dtype(manifest["dtype"]), mode="r")
