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
        if pos + length > len(data):  # the tail a killed writer left half written: every whole record is read
            return
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


def run_file(path: str | Path) -> Path:
    """The ``run-*.wandb`` file of ``path``: the file itself, or the ``offline-run-*`` folder the log names."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"{path}: no run-*.wandb file in this folder (an offline-run-* folder of W&B)")
        return files[-1]
    return path


def records(path: str | Path) -> Iterator:
    """Every ``wandb_internal_pb2.Record`` of an offline run, in order."""
    from wandb.proto import wandb_internal_pb2

    for raw in _records(run_file(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history(path: str | Path) -> list[dict]:
    """Every row logged to the run, as ``{key: value}`` dicts in logging order (``path``: the ``.wandb`` file or
    its ``offline-run-*`` folder)."""
    return [_items(r.history.item) for r in records(path) if r.WhichOneof("record_type") == "history"]


def metrics(path: str | Path) -> list[tuple[str, str]]:
    """``(name or glob, step metric)`` of each ``define_metric``: what W&B plots every key against."""
    out = []
    for r in records(path):
        if r.WhichOneof("record_type") == "metric":
            out.append((r.metric.name or r.metric.glob_name, r.metric.step_metric))
    return out


def run_info(path: str | Path) -> dict:
    """The run record: id, project, group, job type, name and tags, with the config set at start."""
    for r in records(path):
        if r.WhichOneof("record_type") == "run":
            return {"id": r.run.run_id, "project": r.run.project, "group": r.run.run_group, "job_type": r.run.job_type,
                    "name": r.run.display_name, "tags": list(r.run.tags), "resumed": r.run.resumed,
                    "config": _items(r.run.config.update)}
    raise ValueError(f"{path}: no run record")


def config(path: str | Path) -> dict:
    """The run's config: the run record's, updated by every later config record (Lightning's hyper-parameters)."""
    out = dict(run_info(path)["config"])
    for r in records(path):
        if r.WhichOneof("record_type") == "config":
            out.update(_items(r.config.update))
    return out


def summary(path: str | Path) -> dict:
    """The run's summary at its end: every summary update applied in order (the last value of each key)."""
    out: dict = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
            for item in r.summary.remove:
                out.pop(item.key or "/".join(item.nested_key), None)
    return out


def find_run_file(run_dir: str | Path) -> Path:
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run under {run_dir}/wandb")
    return files[-1]
