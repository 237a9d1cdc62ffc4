"""Sharded checkpoints (``trainer=fsdp``): folders written atomically and read back as data, never as code.

A sharded checkpoint is torch.distributed.checkpoint's folder (``.metadata``, one ``__<rank>_0.distcp`` per rank)
plus Lightning's ``meta.pt`` (hyper-parameters, loop state, our tokenizer and run config). torch reads
``.metadata`` with plain ``pickle`` and the non-tensor entries (optimizer settings) with ``weights_only=False``:
either would run whatever a crafted file names. Here ``.metadata`` goes through an unpickler that resolves only
the classes torch's checkpoint metadata is made of (:data:`METADATA_GLOBALS`), the non-tensor entries through
``weights_only=True``, and ``meta.pt`` through :func:`peerlab.checkpointing.load_checkpoint_dict`.

Writes go to ``.<name>.partial`` and are moved into place once every rank has written its shard; the previous
checkpoint is renamed aside first and removed last, so a kill at any moment leaves one complete checkpoint:
:func:`recover` puts the previous one back if the kill fell between the two renames.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from peerlab.checkpointing import UnsafeCheckpoint

META = "meta.pt"  # Lightning's name for the non-tensor part (lightning.fabric.utilities.load._METADATA_FILENAME)
# (module, name) of every class or function torch's checkpoint metadata pickles (torch 2.4-2.13): the dataclasses
# of torch.distributed.checkpoint.metadata, the file layout, and how torch pickles sizes, dtypes and layouts.
METADATA_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "ChunkStorageMetadata", "TensorProperties", "TensorStorageMetadata", "BytesStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    *(("torch", str(dtype).removeprefix("torch.")) for dtype in (
        torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.int16,
        torch.int8, torch.uint8, torch.bool)),
})


class _Refused(pickle.UnpicklingError):
    """A global outside :data:`METADATA_GLOBALS`."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in METADATA_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def is_sharded(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def read_metadata(path: Path, key: str = "resume") -> Metadata:
    """The folder's ``.metadata``, unpickled with :data:`METADATA_GLOBALS` only; one line if it names more."""
    try:
        with open(Path(path) / ".metadata", "rb") as fh:
            meta = _MetadataUnpickler(fh).load()
    except _Refused as exc:
        raise UnsafeCheckpoint(f"{key}={str(path)!r}: refusing to load: its .metadata refers to {exc}, which a "
                               "sharded checkpoint never holds (it could run code)") from None
    except Exception as exc:
        raise UnsafeCheckpoint(f"{key}={str(path)!r}: not a readable sharded checkpoint ({type(exc).__name__})") from None
    if not isinstance(meta, Metadata):
        raise UnsafeCheckpoint(f"{key}={str(path)!r}: .metadata holds a {type(meta).__name__}, not checkpoint metadata")
    return meta


def tensor_shapes(path: Path, prefix: str = "state_dict.", key: str = "resume") -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the model's tensors in a sharded checkpoint, from its metadata alone."""
    meta = read_metadata(path, key)
    return {name.removeprefix(prefix): tuple(item.size) for name, item in meta.state_dict_metadata.items()
            if name.startswith(prefix) and hasattr(item, "size")}


class SafeReader(FileSystemReader):
    """torch's file-system reader, but ``.metadata`` is read by :func:`read_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise UnsafeCheckpoint("per-rank checkpoint metadata is not a format peerlab writes")
        meta = read_metadata(Path(self.path))
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    """torch's load planner, but non-tensor entries (optimizer settings) load with ``weights_only=True``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import (
            set_element,  # as torch's own load_bytes places them
        )

        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load_into(state: dict[str, Any], path: Path) -> None:
    """Fill ``state`` (model and optimizer state dicts, sharded as the live ones are) from the folder ``path``."""
    from torch.distributed.checkpoint import load

    load(state, storage_reader=SafeReader(path), planner=SafeLoadPlanner())


# ------------------------------------------------------------------------------------------------ atomic swap
def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def previous_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.previous")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace(src: Path, dst: Path) -> None:
    """Put the complete ``src`` (file or folder) at ``dst``: the old ``dst`` is renamed aside, ``src`` renamed in,
    the old one removed. Between the renames ``dst`` is missing and :func:`recover` restores the old one."""
    old = previous_path(dst)
    remove(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    _sync_dir(dst.parent)
    remove(old)


def recover(path: Path) -> None:
    """Undo what a kill during :func:`replace` or a write left: the previous checkpoint back in place if the new
    one had not landed, and no half-written ``.partial``."""
    old = previous_path(path)
    if not path.exists() and old.exists():
        os.replace(old, path)
    else:
        remove(old)
    remove(partial_path(path))


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
