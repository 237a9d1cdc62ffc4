"""Checkpoints load as data: every layer's real checkpoint loads with weights_only, and a checkpoint whose pickle
would run code is refused in one line, by eval.py and by resume, with nothing executed."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, run_train

LAYERS = {
    "ffw": [],
    "moe_small": [],
    "pkm_small": ["layer.n_memories=1024"],
    "peer_small": ["layer.n_experts=1024"],
}


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS
    from peerlab.config import register_schema
    from peerlab.train import run

    register_schema()
    out = tmp_path_factory.mktemp("ckptruns")
    results = {}
    for layer, extra in LAYERS.items():
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*TINY, f"layer={layer}", *extra, "budget=1.3e10",
                                                          f"out_dir={out}", "logger=csv"])
        results[layer] = run(cfg)
    return results


@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_layers_checkpoint_loads_as_data(runs, layer):
    from peerlab.checkpointing import check_checkpoint, load_checkpoint_dict
    from peerlab.evaluate import load_checkpoint

    path = runs[layer]["checkpoints"]["last"]
    check_checkpoint(path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    raw = load_checkpoint_dict(path)
    module, tok = load_checkpoint(path)
    for name, value in module.state_dict().items():
        assert torch.equal(value, raw["state_dict"][name]), name
    x = torch.tensor([tok.encode("The history of the").ids])
    assert torch.isfinite(module.model(x)).all()


def _evil_checkpoint(src: str, dst, marker) -> None:
    from peerlab.checkpointing import load_checkpoint_dict

    ckpt = load_checkpoint_dict(src)
    ckpt["payload"] = Payload(str(marker))
    torch.save(ckpt, dst)


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(runs, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    _evil_checkpoint(runs["ffw"]["checkpoints"]["last"], evil, marker)

    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={evil}", f"out_dir={tmp_path / 'eval'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: ckpt='{evil}': refusing to load"), proc.stderr
    assert "builtins.exec" in errors[0] and "Traceback" not in proc.stderr
    assert not marker.exists()

    # Resume: the same payload planted as an interrupted run's last.ckpt.
    run_dir = tmp_path / "runs" / "victim"
    shutil.copytree(runs["ffw"]["run_dir"], run_dir)
    (run_dir / "results.json").unlink()
    shutil.copy(evil, run_dir / "checkpoints" / "last.ckpt")
    args = [*TINY, "budget=1.3e10", f"out_dir={tmp_path / 'runs'}", "run_name=victim", "logger=csv"]
    proc = run_train(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: resume=" in proc.stderr and "refusing to load" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()  # a refusal deletes nothing

    # The payload is live: an unsafe load would have run it (so the checks above can fail).
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint")
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={bogus}", f"out_dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"error: ckpt='{bogus}': not a readable torch checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
