"""Shared fixtures: real configs composed through Hydra and shrunk to tiny sizes; W&B offline; temporary caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# Set before anything imports wandb or datasets: tests never touch the network or the user's caches.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Triton kernels run on the CPU through Triton's interpreter; it must be set before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Sizes that keep an end-to-end run to seconds on 2 CPU cores.
TINY = [
    "model=tiny",
    "data.seq_len=32",
    "data.batch_size=8",
    "tokenizer.vocab_size=512",
    "trainer.val_every_steps=10",
    "trainer.val_batches=4",
    "trainer.log_every_steps=1",
    "trainer.ckpt_every_steps=10",
    "trainer.progress_bar=false",
    "min_steps=5",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache per test session, so the BPE is trained and the corpus tokenized once."""
    path = tmp_path_factory.mktemp("peerlab-cache")
    os.environ["PEERLAB_CACHE"] = str(path)
    os.environ["HF_HOME"] = str(path / "hf")
    return path


@pytest.fixture
def compose(cache_dir):
    """Compose ``configs/train.yaml`` with overrides, exactly as ``train.py`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from peerlab.config import register_schema

    register_schema()

    def _compose(*overrides: str, tiny: bool = True):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=[*(TINY if tiny else []), *overrides])

    return _compose


def run_train(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 600):
    """Run ``train.py`` in a subprocess, as a user would."""
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def entry(monkeypatch, capsys):
    """``python <script> <args>`` run in this process, as ``__main__``, for a mistake refused before Hydra starts: the
    command line's own code path (preflight, the one line, exit status 2) without a new interpreter's seconds of
    start-up. Returns ``(exit status, stdout, stderr)``. Mistakes found once Hydra runs need a subprocess
    (``run_train``): Hydra would configure this process's logging."""
    import runpy
    import sys

    def _entry(script: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("PEERLAB_MALLOPT", "0")  # the entry point would re-execute this very process
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
        capsys.readouterr()
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return _entry


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> dict:
    """One tiny PEER run for the whole test session (its results.json), for tests that need a trained checkpoint."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from peerlab.config import register_schema
    from peerlab.train import run

    register_schema()
    out = tmp_path_factory.mktemp("tiny-run")
    overrides = [*TINY, "layer=peer_small", "layer.n_experts=1024", "layer.d_key=16", "budget=1.5e10", f"out_dir={out}",
                 "logger=csv"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    return run(cfg)
