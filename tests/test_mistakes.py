"""Ordinary mistakes at every entry point give one line, ``error: <key or argument>: <what is wrong>``, exit status 2,
never a traceback. The Hydra entry points are checked through their shared preflight (``peerlab.entry``) and, end to
end, in tests/test_config.py, tests/test_generate.py and tests/test_eval.py; the argparse ones through their mains."""

from __future__ import annotations

import pytest

from conftest import CONFIGS, ROOT

TRAIN = [
    (["+model.foo=1"], "model.foo: not a key of the model group; allowed: activation"),
    (["+layer.foo=1"], "layer.foo: not a key of layer=ffw (FeedForward); allowed: _target_, activation"),
    (["+data.foo=1"], "data.foo: not a key of any data option"),
    (["model.dept=3"], "model.dept=3: unknown key of train.py; allowed under model: activation"),
    (["layer.hidden_mult=-2"], "layer.hidden_mult=-2: the hidden width -256 must be >= 1"),
    (["seed=abc"], "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["model.depth=x"], "model.depth: Value 'x' of type 'str' could not be converted to Integer"),
    (["trainer.devices=0"], "trainer.devices=0: must be an integer >= 1, -1 or auto"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu': allowed: auto, cpu, gpu, cuda"),
    (["trainer.strategy=zero"], "trainer.strategy='zero': allowed: auto, ddp, fsdp"),
    (["trainer.loss_chunk_tokens=-1"], "trainer.loss_chunk_tokens=-1: must be an integer >= 0"),
    (["key=[unclosed"], "key=[unclosed: cannot be read as key=value"),
    (["data.files=/no/such.txt", "data.sources=[]"], "data.files='/no/such.txt': file does not exist"),
    (["layer=peer", "layer.n_experts=1000"], "layer.n_experts=1000: must be a perfect square"),
    (["-cn", "nope"], "-cn nope: no nope.yaml in"),
    (["trainer.precision=bf16-true"], "trainer.precision='bf16-true': allowed: 32-true, bf16-mixed, 16-mixed, 64-true"),
    (["trainer.precision=16-true"], "trainer.precision='16-true': allowed: "),
    (["trainer.precision=bf17"], "trainer.precision='bf17': allowed: "),
    (["trainer.precision=transformer-engine"], "trainer.precision='transformer-engine': allowed: "),
    (["trainer=fsdp", "trainer.precision=16-mixed"], "trainer.precision='16-mixed': trainer=fsdp takes 32-true, bf16-mixed"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9]: must be two numbers in [0, 1)"),
    (["optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
    (["optim.eps=0"], "optim.eps=0.0: must be > 0"),
    (["layer=peer", "layer.activation=tanh"], "layer.activation='tanh': allowed: gelu, relu, silu, identity"),
    (["model.activation=tanh"], "model.activation='tanh': allowed: gelu, relu, silu, identity"),
    (["out_dir=/etc/hostname"], "out_dir='/etc/hostname': is a file, not a folder"),
    (["out_dir=/etc/hostname/runs"], "out_dir='/etc/hostname/runs': cannot be made: /etc/hostname is a file"),
    (["out_dir=" + "x" * 300], "out_dir='xxxx"),
    (["run_name=" + "y" * 300], "run_name="),
    (["trainer.memory_parallel=0"], "trainer.memory_parallel=0: must be an integer >= 1"),
    (["layer=peer", "trainer.memory_parallel=2"], "trainer.memory_parallel=2: splits tables under trainer=fsdp only "
     "(trainer.strategy='auto' here)"),
    (["layer=peer", "trainer=fsdp", "trainer.devices=3", "trainer.accelerator=cpu", "trainer.memory_parallel=2"],
     "trainer.memory_parallel=2: must divide the number of processes (3 here)"),
    (["trainer=fsdp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.memory_parallel=2"],
     "trainer.memory_parallel=2: this layer has no expert tables to split"),
    (["layer=pkm_small", "trainer=fsdp", "trainer.devices=3", "trainer.accelerator=cpu", "trainer.memory_parallel=3"],
     "trainer.memory_parallel=3: must divide d_model (128), the tables' columns"),
]


@pytest.mark.parametrize("args,expected", TRAIN, ids=[" ".join(a) for a, _ in TRAIN])
def test_train_py_mistakes_are_one_line(cache_dir, args, expected):
    from peerlab.config import validate
    from peerlab.entry import preflight
    from peerlab.train import check_mixer

    def check(cfg):  # what train.py checks (train.py's own check())
        validate(cfg)
        check_mixer(cfg)

    line = preflight(args, "train.py", CONFIGS, "train", check=check)
    assert line is not None and line.startswith(expected), line
    assert "\n" not in line


EVAL = [
    ([], "ckpt: missing; give ckpt=<a .ckpt file>"),
    (["ckpt=[]"], "ckpt=[]: no checkpoint given"),
    (["ckpt=" + str(ROOT)], f"ckpt='{ROOT}': a folder, not a checkpoint file"),
    (["ckpt=x.ckpt", "batch_size=0"], "batch_size=0: must be an integer >= 1"),
    (["ckpt=x.ckpt", "max_tokens=abc"], "max_tokens='abc': must be an integer >= 1 or null"),
    (["ckpt=x.ckpt", "eval_sets=[wiki]"], "eval_sets: 'wiki' is not an evaluation set"),
    (["ckpt=x.ckpt", "eval_sets=[]"], "eval_sets=[]: name at least one of"),
    (["ckpt=x.ckpt", "wandb=perhaps"], "wandb='perhaps': must be true or false"),
]


@pytest.mark.parametrize("args,expected", EVAL, ids=[" ".join(a) or "(nothing)" for a, _ in EVAL])
def test_eval_py_mistakes_are_one_line(args, expected):
    from peerlab.entry import preflight
    from peerlab.evaluate import validate_eval

    line = preflight(args, "eval.py", CONFIGS, "eval", check=validate_eval, sweeps=False)
    assert line is not None and line.startswith(expected), line


ARGPARSE = [
    ("peerlab.sizes", ["--layer", "nope"], "error: --layer=nope: not a configs/layer option"),
    ("peerlab.sizes", ["--cost", "s2,s9"], "error: --cost=s2,s9: s9 not a configs/model option"),
    ("peerlab.sizes", ["--vocab", "0"], "error: --vocab=0: must be >= 1"),
    ("peerlab.sizes", ["--vocab", "many"], "error: argument --vocab: invalid int value: 'many'"),
    ("peerlab.prepare", ["--bogus"], "error: --bogus: python -m peerlab.prepare takes train.py's key=value overrides"),
    ("peerlab.prepare", ["modle=x"], "error: modle=x: unknown key of python -m peerlab.prepare"),
    ("peerlab.prepare", ["data=nope"], "error: data='nope' is not an option of config group 'data'"),
    ("peerlab.demo", ["--budget", "-1"], "error: --budget=-1: must be a positive number of FLOPs"),
    ("peerlab.demo", ["--budget", "lots"], "error: argument --budget: invalid float value: 'lots'"),
    ("peerlab.demo", ["--model", "huge"], "error: --model=huge: not a configs/model option"),
    ("peerlab.analysis", ["DIR", "--out", "OUT", "--baseline", "1.0"], "error: --baseline needs --ablation"),
    ("peerlab.analysis", ["DIR", "--out", "OUT", "--where", "budget"], "error: --where 'budget': expected KEY=VALUE"),
    ("peerlab.analysis", ["DIR"], "error: the following arguments are required: --out"),
    ("peerlab.analysis", ["DIR", "--out", "OUT"], "error: no completed results.json under DIR"),
    ("peerlab.sweeps", ["status", "NOWHERE"], "error: NOWHERE: no such folder"),
    ("peerlab.sweeps", ["status", "DIR"], "error: DIR: not a sweep folder (no multirun.yaml"),
    ("peerlab.sweeps", [], "error: the following arguments are required: command"),
    ("peerlab.parallel.plan", ["--device", "tpu"], "error: argument --device: invalid choice: 'tpu'"),
    ("peerlab.analysis", ["DIR", "--out", "OUT", "--series", "layer.name"], "error: --series layer.name: needs --ablation"),
    ("peerlab.analysis", ["DIR", "--out", "/etc/hostname"], "error: argument --out: '/etc/hostname' is a file, not a folder"),
    ("peerlab.analysis.per_source", ["DIR", "--out", "DIR"], "error: argument --out: 'DIR' is a folder; give a file name"),
    ("peerlab.demo", ["--out", "/etc/hostname/demo"], "error: argument --out: '/etc/hostname/demo' cannot be made"),
    ("peerlab.dashboard", ["DIR", "--out", "DIR"], "error: argument --out: 'DIR' is a folder; give a file name"),
    ("peerlab.sweeps", ["status", "DIR", "--watch", "-1"], "error: --watch=-1: must be >= 0 seconds"),
]


@pytest.mark.parametrize("module,args,expected", ARGPARSE, ids=[f"{m} {' '.join(a)}" for m, a, _ in ARGPARSE])
def test_argparse_entry_points_mistakes_are_one_line(tmp_path, capsys, module, args, expected):
    import importlib

    main = importlib.import_module(module if module != "peerlab.analysis" and module != "peerlab.sweeps"
                                   else module + ".__main__").main
    places = {"DIR": str(tmp_path), "OUT": str(tmp_path / "out"), "NOWHERE": str(tmp_path / "nowhere")}
    args = [places.get(a, a) for a in args]
    expected = expected.replace("NOWHERE", places["NOWHERE"]).replace("DIR", places["DIR"])
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(expected), err
    assert len(err.strip().splitlines()) == 1, err


def test_the_table_holds_forty_mistakes():
    from test_generate import test_generate_mistakes_are_one_line as generate
    from test_plan import test_mistakes_are_one_line as plan

    count = lambda test: len(test.pytestmark[0].args[1])  # noqa: E731
    from test_config import CLI_BAD

    assert len(TRAIN) + len(EVAL) + len(ARGPARSE) + len(CLI_BAD) + count(generate) + count(plan) >= 40


def test_a_sweep_points_checkpoint_path_is_taken_as_it_is(tmp_path):
    from peerlab.entry import quote_paths

    ckpt = tmp_path / "budget=6e9,layer=ffw" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert quote_paths([f"ckpt={ckpt}", "eval_sets=[embedded,c4]", "-m"]) == [f"ckpt='{ckpt}'", "eval_sets=[embedded,c4]", "-m"]
    missing = f"ckpt={tmp_path}/a=b/last.ckpt"
    assert quote_paths([missing]) == [missing]  # not there: Hydra's own grammar error stands
    long = "out_dir=" + "x" * 300  # too long for a path: no OSError from asking whether it exists
    assert quote_paths([long]) == [long]
    assert quote_paths(["prompt=héllo wörld 你好"]) == ["prompt='héllo wörld 你好'"]  # Hydra reads non-ASCII quoted only
    assert quote_paths(["prompt=plain words"]) == ["prompt=plain words"]
