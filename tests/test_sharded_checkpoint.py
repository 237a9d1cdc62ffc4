"""Sharded checkpoints (``trainer=fsdp``) are read as data and replaced atomically: a crafted ``.metadata`` is
refused before anything runs, and a kill at any moment of a write leaves one complete checkpoint."""

from __future__ import annotations

import os
import pickle

import pytest

from peerlab.checkpointing import UnsafeCheckpoint
from peerlab.parallel.sharded_checkpoint import partial_path, previous_path, read_metadata, recover, replace


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, ("touch " + self.target,))


def test_a_crafted_metadata_is_refused_before_anything_runs(tmp_path):
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(UnsafeCheckpoint, match=r"refusing to load: its \.metadata refers to (posix|os)\.system"):
        read_metadata(folder)
    assert not (tmp_path / "pwned").exists()
    (folder / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(UnsafeCheckpoint, match="not a readable sharded checkpoint"):
        read_metadata(folder)


class _AllowedModuleOtherName:
    """A global from a module the allow-list names (torch.serialization), under another name: ``torch.save``
    would write a file where the crafted checkpoint says. An allow-list by module would let it through."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import torch

        return (torch.save, ({"pwned": 1}, self.target))


def test_a_global_of_an_allowed_module_under_another_name_is_refused(tmp_path):
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    payload = pickle.dumps(_AllowedModuleOtherName(tmp_path / "written"))
    assert b"torch.serialization" in payload  # the module is one the allow-list names
    (folder / ".metadata").write_bytes(payload)
    with pytest.raises(UnsafeCheckpoint, match=r"refers to torch\.serialization\.save"):
        read_metadata(folder)
    assert not (tmp_path / "written").exists()


def write_folder(path, tag: str) -> None:
    path.mkdir()
    (path / "__0_0.distcp").write_text(tag)


def tag(path) -> str:
    return (path / "__0_0.distcp").read_text()


def test_replace_swaps_in_the_new_checkpoint_and_removes_the_old(tmp_path):
    last = tmp_path / "last.ckpt"
    write_folder(last, "old")
    write_folder(partial_path(last), "new")
    replace(partial_path(last), last)
    assert tag(last) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_kill_between_the_renames_leaves_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last.ckpt"
    write_folder(last, "old")
    write_folder(partial_path(last), "new")
    os.replace(last, previous_path(last))  # replace()'s first rename, then the process dies
    recover(last)
    assert tag(last) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_kill_during_a_write_leaves_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last.ckpt"
    write_folder(last, "old")
    partial_path(last).mkdir()  # rank files half written, no swap yet
    recover(last)
    assert tag(last) == "old" and not partial_path(last).exists()


def test_a_kill_after_the_swap_removes_only_the_stale_previous(tmp_path):
    last = tmp_path / "last.ckpt"
    write_folder(last, "new")
    write_folder(previous_path(last), "old")  # the swap was done, the old one not yet removed
    recover(last)
    assert tag(last) == "new" and not previous_path(last).exists()
