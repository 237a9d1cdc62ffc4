"""train.py end to end on a tiny model: budgets, logs, results.json, W&B offline, resume, multirun."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import TINY
from peerlab.config import ConfigError
from peerlab.train import run
from peerlab.wandb_offline import find_run_file, history

BUDGET = "1.3e10"  # ~60 steps of the TINY model


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS
    from peerlab.config import register_schema

    register_schema()
    out = tmp_path_factory.mktemp("runs")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, f"budget={BUDGET}", f"out_dir={out}"])
    results = run(cfg)
    return cfg, results


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_results_json_is_complete(finished):
    cfg, results = finished
    on_disk = json.loads((__import__("pathlib").Path(results["run_dir"]) / "results.json").read_text())
    assert on_disk["status"] == "completed"
    for key in ("config", "params_total", "params_active", "flops_per_token_forward", "flops_per_token_train",
                "tokens", "steps", "budget", "final_val_loss", "final_val_ppl", "wall_time_s", "tokenizer"):
        assert on_disk[key] is not None, key
    assert on_disk["params_active"] == on_disk["params_total"]  # dense model
    assert on_disk["config"]["layer"]["name"] == "ffw"
    assert on_disk["flops_per_token_train"] == 3 * on_disk["flops_per_token_forward"]


def test_budget_is_spent_to_within_one_step(finished):
    _, r = finished
    per_step = r["flops_per_token_train"] * r["tokens_per_step"]
    assert r["flops"] <= r["budget"] < r["flops"] + per_step
    assert r["steps"] == r["max_steps"] == int(r["budget"] // per_step)


def test_loss_goes_down_and_flops_are_monotonic(finished):
    _, r = finished
    rows = read_csv(r["csv"])
    train = [row for row in rows if row.get("train/loss")]
    assert len(train) >= r["steps"] - 1
    losses = [float(row["train/loss"]) for row in train]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    flops = [float(row["flops"]) for row in rows if row.get("flops")]
    assert all(a <= b for a, b in zip(flops, flops[1:], strict=False))
    assert abs(flops[-1] - r["flops"]) <= 1e-6 * r["flops"]
    assert r["final_val_loss"] < losses[0]
    assert any(row.get("val/loss") for row in rows)


def test_wandb_offline_run_records_loss_against_flops(finished):
    _, r = finished
    rows = history(find_run_file(r["run_dir"]))
    train = [row for row in rows if "train/loss" in row]
    assert train and all("flops" in row for row in train)
    csv_losses = [float(row["train/loss"]) for row in read_csv(r["csv"]) if row.get("train/loss")]
    assert [row["train/loss"] for row in train] == pytest.approx(csv_losses, rel=1e-6)
    assert rows[-1]["flops"] == pytest.approx(r["flops"], rel=1e-6)


def test_checkpoint_carries_tokenizer(finished):
    import torch
    from tokenizers import Tokenizer

    _, r = finished
    ckpt = torch.load(r["checkpoints"]["last"], map_location="cpu", weights_only=False)
    tok = Tokenizer.from_str(ckpt["tokenizer"])
    assert tok.get_vocab_size() == r["vocab_size"]
    assert ckpt["global_step"] == r["steps"]


def test_rerun_of_a_completed_run_does_nothing(finished, capsys):
    cfg, r = finished
    again = run(cfg)
    assert again["wall_time_s"] == r["wall_time_s"]
    assert capsys.readouterr().out.startswith(f"already complete: {r['run_dir']} (final val loss ")


@pytest.mark.parametrize("completed", [True, False], ids=["completed", "interrupted"])
def test_rerun_with_other_config_in_same_dir_is_refused(finished, compose, completed):
    cfg, r = finished
    other = compose(f"budget={BUDGET}", f"out_dir={cfg.out_dir}", f"run_name={cfg.run_name}", "optim.lr=1e-4")
    import pathlib

    results = pathlib.Path(r["run_dir"]) / "results.json"
    if not completed:  # as if it had been killed: a checkpoint and no completed results.json
        results.rename(results.with_name("results.json.bak"))
    try:
        with pytest.raises(ConfigError, match=r"holds a run with another config \(optim.lr: 0.002 there, 0.0001 here\)"):
            run(other)
    finally:
        if not completed:
            results.with_name("results.json.bak").rename(results)


def test_a_start_that_failed_leaves_nothing_that_blocks_a_retry(compose, tmp_path):
    bad = tmp_path / "empty.txt"
    bad.write_text("")
    first = compose("data=files", f"data.files=[{bad}]", "data.sources=[]", f"out_dir={tmp_path}", "run_name=r")
    with pytest.raises(Exception):  # noqa: B017 (the corpus error; its message is tested in test_data.py)
        run(first)
    retry = compose(f"budget={BUDGET}", f"out_dir={tmp_path}", "run_name=r")  # other data: nothing finished was there
    assert run(retry)["status"] == "completed"


def test_resume_false_moves_a_finished_run_aside_and_starts_afresh(compose, tmp_path):
    import pathlib

    cfg = compose("budget=6e9", f"out_dir={tmp_path}", "run_name=r")
    first = run(cfg)
    wandb_id = (tmp_path / "r" / "wandb_id.txt").read_text()
    again = compose("budget=6e9", f"out_dir={tmp_path}", "run_name=r", "resume=false", "optim.lr=1e-3")
    second = run(again)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("r.previous-")]
    assert len(moved) == 1 and second["status"] == "completed" and second["wall_time_s"] != first["wall_time_s"]
    kept = json.loads((moved[0] / "results.json").read_text())
    assert kept == json.loads(json.dumps(first, default=str))  # the finished run, whole, beside the new one
    assert pathlib.Path(kept["checkpoints"]["last"].replace(str(tmp_path / "r"), str(moved[0]))).is_file()
    assert (tmp_path / "r" / "wandb_id.txt").read_text() != wandb_id  # a fresh W&B run, not rows merged into the old


@pytest.mark.parametrize("layer,size", [("peer", "layer.n_experts=1024"), ("pkm", "layer.n_memories=1024")])
def test_sparse_layer_trains_end_to_end_with_usage_metrics(compose, tmp_path, layer, size):
    cfg = compose(f"layer={layer}", size, "layer.d_key=16", "layer.heads=4", "layer.k=8", "budget=1.5e10",
                  f"out_dir={tmp_path}")
    r = run(cfg)
    assert r["status"] == "completed"
    assert r["params_active"] < r["params_total"]
    n_sparse = (1024 * 2 * 64) if layer == "peer" else 1024 * 64  # expert/memory tables of the tiny model
    assert r["params_total"] - r["params_active"] >= n_sparse - 4 * 8 * 64 * 2
    assert 0 < r["usage"]["val/expert_usage"] <= 1
    assert r["usage"]["val/unevenness"] >= 0
    rows = read_csv(r["csv"])
    assert any(row.get("val/expert_usage") for row in rows if "final" not in row)
    assert r["final_val_loss"] < 6.5


@pytest.mark.parametrize("layer", ["moe", "moe_tc"])
def test_moe_trains_end_to_end_with_metrics(compose, tmp_path, layer):
    cfg = compose(f"layer={layer}", "layer.n_experts=4", "budget=1.5e10", f"out_dir={tmp_path}")
    r = run(cfg)
    assert r["status"] == "completed" and r["params_active"] < r["params_total"]
    assert r["usage"]["val/expert_usage"] > 0
    rows = read_csv(r["csv"])
    if layer == "moe":
        assert 0 <= r["usage"]["val/dropped_tokens"] < 1
    else:
        aux = [float(row["train/aux/block0/load_balance"]) for row in rows if row.get("train/aux/block0/load_balance")]
        assert aux and all(a >= 0.01 * 0.99 for a in aux)  # Switch loss >= weight (its minimum, at perfect balance)
        assert any(row.get("train/aux/block0/z_loss") for row in rows)


def test_dense_backbone_size_is_the_same_for_every_layer(compose):
    import torch

    from peerlab.builders import build_model, dense_backbone_params

    sizes = set()
    for layer in ("ffw", "peer_small", "pkm_small", "moe_small"):
        cfg = compose(f"layer={layer}")
        with torch.device("meta"):
            model = build_model(cfg.model, cfg.layer, vocab_size=512, seq_len=32)
        sizes.add(dense_backbone_params(model, cfg.model))
    assert len(sizes) == 1


def test_matmul_precision_auto_takes_tf32_on_cuda_only_and_respects_a_users_choice(monkeypatch):
    import torch

    from peerlab.train import set_matmul_precision

    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    assert set_matmul_precision("auto", cuda=False) is None and calls == []
    assert set_matmul_precision("auto", cuda=True) == "high" and calls == ["high"]
    assert set_matmul_precision("medium", cuda=False) == "medium" and calls[-1] == "medium"
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")  # set by the user in torch
    calls.clear()
    assert set_matmul_precision("auto", cuda=True) is None and calls == []


def test_matmul_precision_is_checked(compose):
    from peerlab.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"trainer.matmul_precision='fast': allowed: auto, highest, high, medium"):
        validate(compose("trainer.matmul_precision=fast"))


def test_accumulation_counts_in_the_budget(compose, tmp_path):
    """Twice the micro-batches per step: twice the tokens per step, half the steps, the same tokens and FLOPs."""
    one = run(compose("budget=1.2e10", f"out_dir={tmp_path}", "run_name=a1", "logger=csv"))
    two = run(compose("budget=1.2e10", f"out_dir={tmp_path}", "run_name=a2", "logger=csv",
                      "trainer.accumulate_grad_batches=2"))
    assert two["tokens_per_step"] == 2 * one["tokens_per_step"] == 2 * 8 * 32
    assert two["max_steps"] == one["max_steps"] // 2 and two["steps"] == two["max_steps"]
    assert abs(two["tokens"] - one["tokens"]) <= one["tokens_per_step"]  # within one step's rounding
    rows = [r for r in read_csv(two["csv"]) if r.get("train/loss")]
    assert float(rows[-1]["flops"]) == two["flops"]  # each logged row counts whole steps of the doubled size


def test_wandb_plots_every_key_against_cumulative_flops(finished):
    from peerlab.wandb_offline import metrics

    _, r = finished
    defined = metrics(r["wandb_dir"])  # the offline-run folder the log and results.json name
    assert ("flops", "") in defined
    assert [step for name, step in defined if name == "*"][-1] == "flops"  # after Lightning's own: ours wins
