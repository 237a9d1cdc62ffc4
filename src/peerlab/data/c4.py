"""C4 English (``data=c4``): from the HF hub when online, or from local shards in the release's own format.

Both paths read the same ``c4-{train,validation}.NNNNN-of-NNNNN.json.gz`` files (one JSON object per line with
``text``, ``timestamp`` and ``url``) through ``datasets``' JSON loader: local paths, or ``hf://`` addresses of
``allenai/c4`` (``en/``) that ``datasets`` downloads and caches. Tokenization runs in ``num_proc`` processes
(``Dataset.map``) and the token shards are cached once for every run of a sweep. Without a network, the hub path
fails within seconds with one message saying how to use local shards instead.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from peerlab.data.corpora import CorpusError

HUB_REPO = "allenai/c4"
HUB_VARIANT = "en"
HUB_HOST = "huggingface.co"
SPLIT_FILES = {"train": ("c4-train", 1024), "val": ("c4-validation", 8)}
OFFLINE_HELP = (
    "data=c4: the Hugging Face hub is unreachable ({why}); download C4 shards elsewhere (e.g. "
    "en/c4-train.00000-of-01024.json.gz and en/c4-validation.00000-of-00008.json.gz from allenai/c4) and "
    "point data.path=/dir/with/shards at them"
)


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, within ``timeout`` seconds (DNS included), or ``None`` when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false"):
        return "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"

    def connect() -> None:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return f"no answer from {HUB_HOST} within {timeout:.0f} s"
    except OSError as exc:
        return f"{HUB_HOST}: {exc.strerror or exc}"
    finally:
        pool.shutdown(wait=False)  # a hung DNS lookup must not hold the caller
    return None


def shard_files(path: str | None, split: str, shards: int) -> list[str]:
    prefix, total = SPLIT_FILES[split]
    if path is None:
        names = [f"{prefix}.{i:05d}-of-{total:05d}.json.gz" for i in range(min(shards, total))]
        return [f"hf://datasets/{HUB_REPO}/{HUB_VARIANT}/{name}" for name in names]
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CorpusError(f"data.path={path!r}: not a directory (it should hold {prefix}.*.json.gz files)")
    files = sorted(str(p) for p in folder.glob(f"{prefix}.*.json.gz"))
    if not files:
        raise CorpusError(f"data.path={path!r}: no {prefix}.*.json.gz files there")
    return files[:shards]


def _tokenize_batch(batch: dict, tokenizer, eot: int, field: str) -> dict:
    return {"ids": [enc.ids + [eot] for enc in tokenizer.encode_batch(batch[field])]}


class C4Corpus:
    def __init__(self, path: str | None = None, train_shards: int = 1, val_shards: int = 1,
                 max_documents: int | None = None, num_proc: int = 0, text_field: str = "text",
                 hf_cache_dir: str | None = None) -> None:
        if train_shards < 1 or val_shards < 1:
            raise CorpusError(f"data.train_shards={train_shards}, data.val_shards={val_shards}: must be >= 1")
        if path is None:
            why = hub_unreachable_reason()
            if why:
                raise CorpusError(OFFLINE_HELP.format(why=why))
        self.name = "c4"
        self.files = {split: shard_files(path, split, n) for split, n in (("train", train_shards), ("val", val_shards))}
        self.max_documents = max_documents
        self.num_proc = num_proc or (os.cpu_count() or 1)
        self.text_field = text_field
        self.hf_cache_dir = hf_cache_dir

    def key(self) -> str:
        h = hashlib.sha256()
        for split, files in sorted(self.files.items()):
            for f in files:
                h.update(f"{split}:{Path(f).name}".encode())
                if os.path.exists(f):  # a local shard replaced by another of the same name changes the key
                    h.update(str(os.path.getsize(f)).encode())
        h.update(f"max_documents={self.max_documents}".encode())
        return f"c4-{h.hexdigest()[:16]}"

    def _dataset(self, split: str):
        from datasets import load_dataset

        ds = load_dataset("json", data_files=self.files[split], split="train", cache_dir=self.hf_cache_dir)
        if self.text_field not in ds.column_names:
            raise CorpusError(f"data.text_field={self.text_field!r}: not a field of {self.files[split][0]} "
                              f"(fields: {', '.join(ds.column_names)})")
        if self.max_documents:
            ds = ds.select(range(min(self.max_documents, len(ds))))
        return ds

    def texts(self, split: str) -> Iterator[str]:
        for row in self._dataset(split):
            yield row[self.text_field]

    def encode(self, tok, split: str) -> Iterator[np.ndarray]:
        from peerlab.data.tokenizer import eot_id

        ds = self._dataset(split)
        mapped = ds.map(_tokenize_batch, batched=True, batch_size=1000, num_proc=min(self.num_proc, len(ds)) or None,
                        remove_columns=ds.column_names, desc=f"tokenizing c4 {split}",
                        fn_kwargs={"tokenizer": tok, "eot": eot_id(tok), "field": self.text_field})
        for batch in mapped.with_format("numpy").iter(batch_size=1000):
            yield from batch["ids"]
