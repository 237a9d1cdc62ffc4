"""Read the rows of an offline W&B run (``run-*.wandb``) without network or a W&B account.

The file is a LevelDB-style block log of ``wandb_internal_pb2.Record`` protobufs: a 7-byte header (``:W&B``, a
2-byte magic, a 1-byte version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32 u32, length u16,
type u8: 1 full, 2 first, 3 middle, 4 last). wandb ships no public reader for it; this follows its internal
format (tested against the pinned wandb version) so tests and analysis can check what W&B recorded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

HEADER_LEN = 7
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (missing ':W&B' header)")
    pos, pending = HEADER_LEN, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        pos += CHUNK_HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:
            continue
        else:
            raise ValueError(f"corrupt W&B run file: chunk type {kind} at byte {pos}")


def history(path: str | Path) -> list[dict]:
    """Every row logged to the run, as ``{key: value}`` dicts in logging order."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in _records(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def find_run_file(run_dir: str | Path) -> Path:
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run under {run_dir}/wandb")
    return files[-1]
