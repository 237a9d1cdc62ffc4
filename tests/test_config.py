"""Every config option composes and instantiates; bad input fails with one line naming the key."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONFIGS, run_train
from peerlab.builders import build_model
from peerlab.config import ConfigError, sci, validate

GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(compose, group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "files":
        f = tmp_path / "a.txt"
        f.write_text("hello world")
        overrides.append(f"data.files=[{f}]")
    cfg = compose(*overrides, tiny=(group != "model"))
    OmegaConf.resolve(cfg)
    validate(cfg)
    # Building on the meta device checks every shape of even the paper-scale presets without allocating them.
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.layer, vocab_size=512, seq_len=cfg.data.seq_len)
    assert model.num_params() > 0


def test_sci_names():
    assert [sci(x) for x in (3e13, 1.5e19, 2e19, 1e13, 6e18, 123.0)] == ["3e13", "1.5e19", "2e19", "1e13", "6e18", "1.23e2"]


BAD = [
    (["budget=-1"], "budget=-1.0: must be a positive number"),
    (["budget=0"], "budget=0.0: must be a positive number"),
    (["model.depth=0"], "model.depth=0: must be an integer >= 1"),
    (["model.head_dim=48"], "model.head_dim=48: must divide d_model=64"),
    (["model.sparse_blocks=[7]"], "model.sparse_blocks=[7]"),
    (["model.sparse_blocks=middel"], "model.sparse_blocks='middel'"),
    (["data.seq_len=0"], "data.seq_len=0: must be an integer >= 1"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["data.train_fraction=0"], "data.train_fraction=0: must be a number in (0, 1]"),
    (["data.train_fraction=1.5"], "data.train_fraction=1.5: must be a number in (0, 1]"),
    (["data.train_fraction=half"], "data.train_fraction='half': must be a number in (0, 1]"),
    (["data.files=[/nonexistent/x.txt]"], "data.files='/nonexistent/x.txt': file does not exist"),
    (["tokenizer.kind=sentencepiece"], "tokenizer.kind='sentencepiece'"),
    (["tokenizer.vocab_size=100"], "tokenizer.vocab_size=100"),
    (["optim.lr=0"], "optim.lr=0.0: must be > 0"),
    (["trainer.val_every_steps=0"], "trainer.val_every_steps=0"),
    (["logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0][0] for b in BAD])
def test_bad_values_name_key_and_value(compose, overrides, message):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


CLI_BAD = [
    (["layer=nope"], "error: layer='nope' is not an option of config group 'layer'; allowed: ffw", None),
    (["model=tiny,huge"], "error: model='huge' is not an option of config group 'model'; allowed: d12", None),
    (["budget=abc"], "error: budget: Value 'abc'", "could not be converted to Float"),
    (["budget=-5"], "error: budget=-5.0: must be a positive number", None),
    (["budget=1e3"], "error: budget=1e+03 buys 0 steps", None),
    (["data=files", "data.files=[/no/such/file.txt]"], "error: data.files='/no/such/file.txt': file does not exist", None),
    (["+foo=1"], "error: foo: not a key of train.py's config; allowed: budget", None),
    (["modle=d2"], "error: modle=d2: unknown key of train.py; allowed: budget", None),
    (["resume=maybe"], "error: resume: Value 'maybe' is not a valid bool", None),
    (["model=d2,d4"], "error: model=d2,d4: a sweep of values; add -m", None),
]


@pytest.mark.parametrize("args,first,second", CLI_BAD, ids=[" ".join(a[0]) for a in CLI_BAD])
def test_cli_errors_are_short(cache_dir, tmp_path, entry, args, first, second):
    from conftest import TINY

    if args == ["budget=1e3"]:  # found inside the run, once Hydra has started: the real command line
        proc = run_train(*TINY, f"out_dir={tmp_path}", *args, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:  # refused before Hydra starts: train.py's __main__ in this process
        code, _, err = entry("train.py", *TINY, f"out_dir={tmp_path}", *args)
    assert code == 2, err
    assert err.startswith(first), err
    if second:
        assert second in err
    assert len(err.strip().splitlines()) == 1, err


def test_hydra_groups_accept_the_options_plugins_register():
    from peerlab.overrides import check_group_overrides

    for launcher in ("joblib", "slurm", "submitit_local", "basic"):
        assert check_group_overrides([f"hydra/launcher={launcher}"], CONFIGS) is None, launcher
    problem = check_group_overrides(["hydra/launcher=nope"], CONFIGS)
    assert problem.startswith("hydra/launcher='nope' is not an option of config group 'hydra/launcher'; allowed: basic, joblib")
