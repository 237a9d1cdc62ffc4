"""Tokenized splits cached on disk as sharded flat ``uint16``/``uint32`` token files plus a manifest.

A cache entry is a folder named by the corpus and tokenizer fingerprints, built in a temporary folder and renamed
into place, so a killed build never leaves a half-written entry; every run of a sweep shares it. The manifest
records each shard's token count and SHA-256. On load, sizes are always checked and hashes are recomputed unless a
stamp shows the shard unchanged (same size and modification time) since its last full check: a truncated or
altered shard is detected and the entry rebuilt, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from peerlab.data.tokenizer import tokenizer_hash

MANIFEST = "manifest.json"
STAMP = "verified.json"
FORMAT_VERSION = 2
SHARD_TOKENS = 1 << 28  # 256M tokens: 512 MiB of uint16 per shard


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def entry_dir(cache_dir: Path, corpus_key: str, tok: Tokenizer) -> Path:
    return cache_dir / "tokens" / f"{corpus_key}-{tokenizer_hash(tok)}"


def _file_state(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def verify(entry: Path, tok: Tokenizer) -> dict | None:
    """The manifest if ``entry`` is complete and intact for ``tok``, else ``None``."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT_VERSION or manifest.get("tokenizer") != tokenizer_hash(tok):
        return None
    try:
        stamp = json.loads((entry / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        stamp = {}
    itemsize = np.dtype(manifest["dtype"]).itemsize
    fresh_stamp = {}
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            path = entry / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * itemsize:
                return None
            state = _file_state(path)
            if stamp.get(shard["file"]) != state and _sha256(path) != shard["sha256"]:
                return None
            fresh_stamp[shard["file"]] = state
    if fresh_stamp != stamp:
        (entry / STAMP).write_text(json.dumps(fresh_stamp))
    return manifest


class _ShardWriter:
    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.documents = 0
        self._fh = None
        self._n = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._fh = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._n = 0

    def write(self, ids: np.ndarray) -> None:
        """Append one document's ids; a document never straddles two shards (blocks never cross them either)."""
        if self._fh is None or (self._n and self._n + len(ids) > self.shard_tokens):
            self.close_shard()
            self._open()
        self._fh.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self._n += len(ids)
        self.shards[-1]["tokens"] = self._n
        self.documents += 1

    def close_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self.shards[-1]["sha256"] = _sha256(self.folder / self.shards[-1]["file"])


def build(entry: Path, tok: Tokenizer, splits: dict[str, Iterable[np.ndarray]], meta: dict,
          shard_tokens: int | None = None, progress: bool = False) -> dict:
    """Write each split's documents (token-id arrays, end-of-text already appended) into shards, atomically."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        dtype = token_dtype(tok.get_vocab_size())
        manifest = {"format": FORMAT_VERSION, "tokenizer": tokenizer_hash(tok), "dtype": dtype.name,
                    "splits": {}, **meta}
        for split, docs in splits.items():
            writer = _ShardWriter(tmp, split, dtype, shard_tokens or SHARD_TOKENS)
            bar = _progress(split, progress)
            t0 = time.perf_counter()
            for ids in docs:
                writer.write(ids)
                if bar is not None:
                    bar.update(len(ids))
            writer.close_shard()
            if bar is not None:
                bar.close()
            total = sum(s["tokens"] for s in writer.shards)
            if total == 0:
                raise ValueError(f"data: the {split} split has no tokens")
            manifest["splits"][split] = {"documents": writer.documents, "tokens": total, "shards": writer.shards,
                                         "seconds": round(time.perf_counter() - t0, 3)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            tmp.rename(entry)
        except OSError:  # the entry exists: another process (rank, sweep job) may have just built it
            if verify(entry, tok) is not None:
                return json.loads((entry / MANIFEST).read_text())
            shutil.rmtree(entry, ignore_errors=True)
            tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    verify(entry, tok)  # writes the stamp, so the next load need not rehash
    return manifest


def _progress(split: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=f"tokenizing {split}", unit="tok", unit_scale=True, smoothing=0.1)


def content_hash(manifest: dict) -> str:
    """A hash of a cache entry's tokens, from what its manifest already records (each shard's SHA-256 and token
    count, the dtype, the tokenizer): nothing is re-read, at any corpus size."""
    h = hashlib.sha256()
    h.update(json.dumps([manifest.get("tokenizer"), manifest.get("dtype")]).encode())
    for split in sorted(manifest["splits"]):
        for shard in manifest["splits"][split]["shards"]:
            h.update(f"{split}:{shard['tokens']}:{shard['sha256']}".encode())
    return h.hexdigest()[:16]


def load_split(entry: Path, manifest: dict, split: str) -> list[np.memmap]:
    dtype = np.dtype(manifest["dtype"])
    return [np.memmap(entry / s["file"], dtype=dtype, mode="r") for s in manifest["splits"][split]["shards"]]
