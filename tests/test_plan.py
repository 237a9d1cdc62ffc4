"""``python -m peerlab.plan``: the grid's points as train.py -m composes them, sizes from the project's own code, a
verdict per point against the device, and the smallest change that fits; the check a training run makes itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


def plan(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "peerlab.plan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def paper_grid() -> list[dict]:
    return json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json").stdout)


def test_every_point_of_the_paper_grid_fits_40_gb(paper_grid):
    assert len(paper_grid) == 2 * 4 * 4
    required = {"overrides", "params", "strategy", "micro_batch", "accumulate", "estimate_gb", "fits"}
    assert all(required <= set(row) for row in paper_grid)
    assert all(row["fits"] and row["estimate_gb"] <= 0.9 * 40 for row in paper_grid)
    assert {row["strategy"] for row in paper_grid} == {"fsdp"}
    # the same 128 x 2048 tokens per step as the paper, as micro-batches of one sequence
    assert {(row["micro_batch"], row["accumulate"], row["tokens_per_step"]) for row in paper_grid} == {(1, 16, 128 * 2048)}


def test_sizes_and_steps_come_from_the_project_code(paper_grid):
    from peerlab.builders import build_model
    from peerlab.flops import flops_breakdown, plan_budget
    from peerlab.sweeps.expand import CONFIGS, compose_point

    row = next(r for r in paper_grid if r["overrides"] == ["budget=6e+18", "model=d20", "layer=peer"])
    cfg = compose_point(CONFIGS.parent / "experiments", "isoflop_paper", row["overrides"])
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.layer, 50257, 2048)
    assert row["params"] == model.num_params() and row["params_active"] == model.active_params()
    assert row["steps"] == plan_budget(6e18, flops_breakdown(model).train, 128 * 2048, 20).max_steps


def test_a_point_that_does_not_fit_gets_the_first_change_that_does():
    # the grid as it shipped before micro-batching: DDP, 16 sequences per GPU, the whole loss at once
    before = ["trainer=ddp", "data.batch_size=16", "trainer.accumulate_grad_batches=1", "trainer.loss_chunk_tokens=0"]
    rows = json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json", "budget=2e19",
                           "model=d24", "layer=peer", *before).stdout)
    (row,) = rows
    assert not row["fits"] and row["suggestion"] is not None
    fixed = json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json",
                            "budget=2e19", "model=d24", "layer=peer", *before, *row["suggestion"]["overrides"]).stdout)
    assert fixed[0]["fits"] and fixed[0]["estimate_gb"] == pytest.approx(row["suggestion"]["estimate_gb"])
    table = plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "budget=2e19", "model=d24",
                 "layer=peer", *before).stdout
    assert "add " + " ".join(row["suggestion"]["overrides"]) in table and "0 of 1 point(s) fit 40 GiB" in table


def test_a_point_nothing_fits_says_how_much_it_needs():
    rows = json.loads(plan("--device-gb", "1", "--json", "model=d24", "layer=peer", "tokenizer=gpt2",
                           "data.seq_len=2048").stdout)
    assert not rows[0]["fits"] and rows[0]["suggestion"] is None and rows[0]["needs_gb"] > 1


@pytest.mark.parametrize("args,expected", [
    (["--device-gb", "-3"], "--device-gb=-3: must be > 0"),
    (["--device-gb", "lots"], "argument --device-gb: invalid float value: 'lots'"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["layer=nope"], "error: layer='nope' is not an option of config group 'layer'"),
    (["-cd", "experiments", "-cn", "nope"], "-cn nope: no nope.yaml in experiments"),
    (["budget=abc"], "error: "),
])
def test_mistakes_are_one_line(args, expected, capsys, monkeypatch):
    from peerlab.plan import main

    monkeypatch.chdir(ROOT)  # -cd experiments, as from the repository's root
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_a_training_run_on_a_gpu_too_small_is_refused_with_what_fits(compose, monkeypatch):
    from peerlab.config import ConfigError
    from peerlab.plan import _meta_model, check_run

    cfg = compose("model=d12", "layer=peer", "tokenizer=gpt2", "data.seq_len=2048", "data.batch_size=16", tiny=False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 40 * 2**30}))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a 40 GB GPU")
    with pytest.raises(ConfigError, match=r"trainer: this run needs about [\d.]+ GiB per GPU, more than the 40 GiB of "
                                          r"a 40 GB GPU; add data.batch_size=\d+ trainer.accumulate_grad_batches=\d+ "):
        check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=True)
    assert check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=False).peak > 40 * 2**30  # the CPU is not refused
    cfg.trainer.check_memory = False
    check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=True)  # the user's own risk
