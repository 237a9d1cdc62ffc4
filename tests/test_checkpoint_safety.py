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


def _crafted(src: str, dst, edit) -> None:
    from peerlab.checkpointing import load_checkpoint_dict

    ckpt = load_checkpoint_dict(src)
    edit(ckpt["hyper_parameters"])
    torch.save(ckpt, dst)


def _writes(marker) -> dict:
    """A config node that Hydra's instantiate turns into a call writing ``marker`` (its target policy lets it by)."""
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


CRAFTED = {
    "nested-target-in-layer": ("ffw", lambda hp, m: hp["layer"].__setitem__("activation", _writes(m)),
                               "hyper_parameters.layer.activation: a saved config may not instantiate anything", "layer"),
    "nested-target-in-model": ("ffw", lambda hp, m: hp["model"].__setitem__("activation", _writes(m)),
                               "hyper_parameters.model.activation: a saved config may not instantiate anything", "model"),
    "nested-target-in-optim": ("ffw", lambda hp, m: hp["optim"].__setitem__("groups", {"values": _writes(m)}),
                               "hyper_parameters.optim.groups.values: a saved config may not instantiate anything", "optim"),
    "layer-target-outside-the-registry": (
        "ffw", lambda hp, m: hp.__setitem__("layer", _writes(m)),
        "hyper_parameters.layer._target_='builtins.open': not a peerlab mixer; allowed: peerlab.mixers.ffw.FeedForward", "layer"),
    "args-smuggled-in": ("ffw", lambda hp, m: hp["layer"].update(_args_=[str(m), "w"]),
                         "hyper_parameters.layer._args_: a saved config may not instantiate anything", None),
    "partial-smuggled-in": ("ffw", lambda hp, m: hp["layer"].update(_partial_=True),
                            "hyper_parameters.layer._partial_: a saved config may not instantiate anything", None),
    "terabytes-of-experts": ("peer_small", lambda hp, m: hp["layer"].update(n_experts=10**12),
                             "hyper_parameters describe model.blocks.0.mixer.", None),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_saved_config_is_refused_in_one_line_naming_the_key_with_nothing_run(runs, tmp_path, case):
    from hydra.utils import instantiate

    from peerlab.config import ConfigError
    from peerlab.evaluate import load_checkpoint

    layer, edit, expected, node = CRAFTED[case]
    marker, crafted = tmp_path / "written-by-the-checkpoint", tmp_path / "crafted.ckpt"
    _crafted(runs[layer]["checkpoints"]["last"], crafted, lambda hp: edit(hp, marker))
    with pytest.raises(ConfigError) as caught:
        load_checkpoint(crafted)
    message = str(caught.value)
    assert message.startswith(f"ckpt='{crafted}': {expected}"), message
    assert "\n" not in message and not marker.exists()
    hparams = torch.load(crafted, weights_only=True)["hyper_parameters"]
    if node is not None:  # the test can fail: the very same node through a bare instantiate runs the payload
        instantiate(next(v for v in _nodes(hparams[node]) if isinstance(v, dict) and v.get("_target_") == "builtins.open"))
        assert marker.exists()
    if case == "terabytes-of-experts":  # built for real, this would have asked for ~10^12 rows of each table
        from peerlab.builders import build_model

        with torch.device("meta"):
            model = build_model(hparams["model"], hparams["layer"], hparams["vocab_size"], hparams["seq_len"])
        assert model.num_params() > 10**13


def _nodes(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _nodes(value)


def test_a_crafted_checkpoint_is_one_line_through_eval_and_resume(runs, tmp_path):
    marker, crafted = tmp_path / "written-by-the-checkpoint", tmp_path / "crafted.ckpt"
    _crafted(runs["ffw"]["checkpoints"]["last"], crafted, lambda hp: hp["layer"].__setitem__("activation", _writes(marker)))
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={crafted}", f"out_dir={tmp_path / 'eval'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert errors == [f"error: ckpt='{crafted}': hyper_parameters.layer.activation: a saved config may not "
                      "instantiate anything"], proc.stderr
    assert not marker.exists()

    run_dir = tmp_path / "runs" / "victim"
    shutil.copytree(runs["ffw"]["run_dir"], run_dir)
    (run_dir / "results.json").unlink()
    shutil.copy(crafted, run_dir / "checkpoints" / "last.ckpt")
    proc = run_train(*TINY, "budget=1.3e10", f"out_dir={tmp_path / 'runs'}", "run_name=victim", "logger=csv", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: resume=" in proc.stderr and "hyper_parameters.layer.activation: a saved config may not" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from peerlab.checkpointing import AtomicCheckpointIO, load_checkpoint_dict
    from peerlab.run_folder import holds_run

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def killed_midway(self, checkpoint, target, storage_options=None):
        with open(target, "wb") as fh:
            fh.write(b"PK\x03\x04" + b"\x00" * 100)  # the first bytes of a zip, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    assert load_checkpoint_dict(path)["global_step"] == 1  # the previous checkpoint, whole
    assert any(p.name.startswith(".last.ckpt.tmp-") for p in path.parent.iterdir())  # the cut-short write, aside
    path.unlink()
    assert not holds_run(tmp_path)  # a write cut short is not a finished checkpoint


@pytest.mark.parametrize("where", ["data", "layer"])
def test_a_hydra_key_in_the_saved_run_config_is_refused(runs, tmp_path, where):
    from peerlab.checkpointing import load_checkpoint_dict
    from peerlab.config import ConfigError
    from peerlab.evaluate import load_checkpoint

    marker, crafted = tmp_path / "written", tmp_path / "crafted.ckpt"
    ckpt = load_checkpoint_dict(runs["ffw"]["checkpoints"]["last"])
    ckpt["peerlab_config"][where]["extra"] = _writes(marker)  # eval.py reads the run config (its data, its layer)
    torch.save(ckpt, crafted)
    with pytest.raises(ConfigError, match=rf"peerlab_config.{where}.extra: a saved config may not instantiate anything"):
        load_checkpoint(crafted)
    assert not marker.exists()
