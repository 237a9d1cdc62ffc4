"""The rules of a run's folder: what a run finds there and what it does about it. Nothing finished is ever lost
or reused silently.

A folder *holds a run* once something finished is in it: a checkpoint, or a completed ``results.json``. Then:

| the folder holds | same config, ``resume=true`` | same config, ``resume=false`` | another config |
|---|---|---|---|
| nothing finished (new, or a start that failed before its first checkpoint) | start, (re)writing its config | start | start, replacing the config |
| an interrupted run | resume from ``last.ckpt`` | the earlier run is moved aside, whole; start afresh | refused in one line naming the keys |
| a completed run | "already complete", nothing is trained | moved aside; start afresh | refused in one line naming the keys |

Moving aside renames the earlier run's files (checkpoints, metrics, results, W&B, its config) into the sibling
folder ``<run>.previous-<time>``, so a fresh start gets a fresh W&B run and the old one stays whole. Only the log
of the job in progress (``train.log``) stays, and keeps appending. "Another config" ignores the keys that do not
change what is trained (:data:`NON_IDENTITY_KEYS`) and reads a saved config that predates a key as holding that
key's neutral value (``config.ADDED_KEYS``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from peerlab.config import ADDED_KEYS, NON_IDENTITY_KEYS, ConfigError
from peerlab.run_lock import LOCK

log = logging.getLogger(__name__)

RESULTS = "results.json"
RUN_CONFIG = "run_config.yaml"
DATA = "data.json"  # the data's fingerprint (``TextDataModule.fingerprint``): part of the run's identity
CHECKPOINTS = "checkpoints"
WANDB_ID = "wandb_id.txt"  # the run's W&B id (peerlab.loggers), kept while the run holds something finished
# What stays when a run is moved aside: the log files of the job in progress, which Hydra has open, and the
# folder's lock, which this job holds.
KEPT_IN_PLACE = (".hydra", LOCK)


def read_results(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / RESULTS).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_results(run_dir: Path, results: dict) -> None:
    tmp = Path(run_dir) / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(Path(run_dir) / RESULTS)


def holds_run(run_dir: Path) -> bool:
    """Whether something finished is in the folder: a checkpoint, or a completed results.json."""
    ckpts = Path(run_dir) / CHECKPOINTS
    # a whole checkpoint (file or sharded folder), or the previous one a swap set aside; not a write cut short
    if ckpts.is_dir() and any((p.name.endswith(".ckpt") and not p.name.startswith(".")) or p.name.endswith(".previous")
                              for p in ckpts.iterdir()):
        return True
    results = read_results(run_dir)
    return bool(results) and results.get("status") == "completed"


def identity(cfg: DictConfig | dict) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container = {k: v for k, v in container.items() if k not in NON_IDENTITY_KEYS}
    for dotted in (k for k in NON_IDENTITY_KEYS if "." in k):
        parent, _, key = dotted.rpartition(".")
        node = container.get(parent)
        if isinstance(node, dict) and key in node:
            container[parent] = {k: v for k, v in node.items() if k != key}
    return container


def with_added_keys(saved: DictConfig) -> DictConfig:
    for dotted, value in ADDED_KEYS.items():
        parent, _, key = dotted.rpartition(".")
        node = OmegaConf.select(saved, parent) if parent else saved
        if isinstance(node, DictConfig) and key not in node:
            with open_dict(node):  # a saved config that predates a key holds its neutral value
                node[key] = value
    return saved


class _Absent:
    def __repr__(self) -> str:
        return "(no such key)"


ABSENT = _Absent()  # the value a refusal shows for a key one config has and the other lacks


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if (key in old) != (key in new):  # a key added or removed, even one whose value is null
                out.append((f"{prefix}{key}", old.get(key, ABSENT), new.get(key, ABSENT)))
                continue
            out += differences(old[key], new[key], f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def saved_config(run_dir: Path) -> DictConfig | None:
    path = Path(run_dir) / RUN_CONFIG
    if path.is_file():
        return with_added_keys(OmegaConf.load(path))
    results = read_results(run_dir)
    return with_added_keys(OmegaConf.create(results["config"])) if results and "config" in results else None


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    """Written whole or not at all: another rank may be reading it."""
    saved = Path(run_dir) / RUN_CONFIG
    tmp = saved.with_name(f".{RUN_CONFIG}.tmp")
    OmegaConf.save(cfg, tmp, resolve=True)
    tmp.replace(saved)


def move_aside(run_dir: Path) -> Path:
    """Move the earlier run's files into ``<run>.previous-<time>``; returns that folder."""
    run_dir = Path(run_dir)
    target = run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.split('~')[0]}~{n}")
    target.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name in KEPT_IN_PLACE or (entry.suffix == ".log" and entry.name.startswith("train")):
            continue
        os.replace(entry, target / entry.name)
    return target


def settle(run_dir: Path, cfg: DictConfig, rank: int = 0) -> dict | None:
    """Apply the rules of the module docstring before a run starts. Returns the results of an identical
    completed run (there is nothing to do), else None; raises :class:`ConfigError` for another config."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not cfg.resume:
        if rank == 0:
            moved = move_aside(run_dir)
            log.info("resume=false: the earlier run in %s is moved aside, whole, to %s; starting afresh", run_dir, moved)
        else:
            return None  # rank 0 moves it; the rest start afresh with it
    if holds_run(run_dir):
        old = saved_config(run_dir)
        diff = differences(identity(old), identity(cfg)) if old is not None else []
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diff[:3])
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            raise ConfigError(f"run_name={cfg.run_name!r}: {run_dir} holds a run with another config ({shown}{more}); "
                              "choose another run_name= or out_dir=, or resume=false to move that run aside and start afresh")
        results = read_results(run_dir)
        if results and results.get("status") == "completed":
            return results
    if rank == 0:
        if not holds_run(run_dir):
            # an attempt that left nothing finished (perhaps under another config) leaves no W&B id either: a start
            # from step 0 is a fresh W&B run, never rows appended to that attempt's
            (run_dir / WANDB_ID).unlink(missing_ok=True)
        save_config(run_dir, cfg)
    return None


def read_data(run_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(run_dir) / DATA).read_text())
    except (OSError, ValueError):
        results = read_results(run_dir)  # a run whose data.json was lost still names its data in results.json
        data = results.get("data") if results else None
    return data if isinstance(data, dict) else None


def write_data(run_dir: Path, fingerprint: dict) -> None:
    tmp = Path(run_dir) / f".{DATA}.tmp"
    tmp.write_text(json.dumps(fingerprint, indent=2))
    tmp.replace(Path(run_dir) / DATA)


# The fingerprint's keys that decide whether two runs saw the same data, in the order a refusal names them.
DATA_IDENTITY = ("corpus", "tokenizer", "vocab_size", "tokens")


def data_differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    return [(k, old.get(k), new.get(k)) for k in DATA_IDENTITY if old.get(k) != new.get(k)]


def check_data(run_dir: Path, cfg: DictConfig, fingerprint: dict, rank: int = 0) -> None:
    """The data is part of a run's identity: a folder holding a run made on other data (a corpus file edited, other
    shards, another tokenizer) refuses this one in one line, as another config is refused; a new run records its
    data. A run that predates fingerprints is resumed as it is, its data unchecked (said in the log)."""
    run_dir = Path(run_dir)
    saved = read_data(run_dir)
    if holds_run(run_dir):
        if saved is None:
            log.warning("%s predates data fingerprints: its data cannot be compared with this run's", run_dir)
            results = read_results(run_dir)
            if rank == 0 and not (results and results.get("status") == "completed"):
                write_data(run_dir, fingerprint)  # what the rest of this interrupted run trains on
            return
        diff = data_differences(saved, fingerprint)
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diff[:2])
            raise ConfigError(f"run_name={cfg.run_name!r}: {run_dir} holds a run trained on other data than "
                              f"data={cfg.data.get('name')} gives now ({shown}); choose another run_name= or out_dir=, "
                              "or resume=false to move that run aside and start afresh")
        return
    if rank == 0:
        write_data(run_dir, fingerprint)
