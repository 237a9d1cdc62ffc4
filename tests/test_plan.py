"""``python -m peerlab.plan``: the grid's points as train.py -m composes them, sizes from the project's own code, a
verdict per point against the device, and the smallest change that fits; the check a training run makes itself."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT


def plan(*args: str, check: bool = True) -> SimpleNamespace:
    """``python -m peerlab.plan ARGS`` from the repository's root, run in this process (its main, its output)."""
    import contextlib
    import io
    import os

    from peerlab.parallel.plan import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(here)
    proc = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


FIXED_4X4 = ("data.batch_size=4", "trainer.accumulate_grad_batches=4", "data.sequences_per_step=null")


@pytest.fixture(scope="module")
def paper_grid() -> list[dict]:
    return json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json").stdout)


def test_every_point_of_the_paper_grid_fits_40_gb(paper_grid):
    assert len(paper_grid) == 2 * 4 * 4
    required = {"overrides", "params", "strategy", "micro_batch", "accumulate", "estimate_gb", "fits"}
    assert all(required <= set(row) for row in paper_grid)
    assert all(row["fits"] and row["estimate_gb"] <= 0.9 * 40 for row in paper_grid)
    assert {row["strategy"] for row in paper_grid} == {"fsdp"}
    # the same 128 x 2048 tokens per step as the paper, in the largest micro-batches that fit (data.batch_size=auto):
    # all 16 sequences at once for the smallest models, 4 x 4 for the largest with tables
    assert {row["tokens_per_step"] for row in paper_grid} == {128 * 2048}
    assert all(row["micro_batch_auto"] and row["micro_batch"] * row["accumulate"] == 16 for row in paper_grid)
    chosen = {" ".join(row["overrides"][1:]): row["micro_batch"] for row in paper_grid}
    assert chosen["model=d12 layer=ffw"] == 16 and chosen["model=d24 layer=peer"] == 4


def test_the_paper_grid_splits_pkm_and_peer_tables_and_moves_a_seventh_of_the_bytes(paper_grid):
    """issue 35: d24/peer fits 40 GB with 15% headroom at a micro-batch of 4, moving at most a third of what it moves
    with its tables gathered at the same micro-batch; tables split where a layer has them."""
    assert all(row["memory_parallel"] == (8 if row["overrides"][-1] in ("layer=pkm", "layer=peer") else 1)
               for row in paper_grid)
    assert all(row["comm_gb_per_step"] > 0 and sum(row["comm_gb"].values()) == pytest.approx(row["comm_gb_per_step"])
               for row in paper_grid)
    d24 = next(r for r in paper_grid if r["overrides"] == ["budget=2e+19", "model=d24", "layer=peer"])
    assert d24["estimate_gb"] <= 0.85 * 40 and d24["micro_batch"] >= 4
    gathered = json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json",
                               "budget=2e19", "model=d24", "layer=peer", "trainer.memory_parallel=1",
                               *FIXED_4X4).stdout)[0]
    assert d24["comm_gb_per_step"] <= gathered["comm_gb_per_step"] / 3
    tables = sum(v for k, v in d24["comm_gb"].items() if k.startswith("memory parallel"))
    fsdp_gathers_of_tables = gathered["comm_gb_per_step"] - (d24["comm_gb_per_step"] - tables)
    assert tables * 10 <= fsdp_gathers_of_tables


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
    from peerlab.parallel.plan import main

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
    from peerlab.parallel.plan import _meta_model, check_run

    cfg = compose("model=d12", "layer=peer", "tokenizer=gpt2", "data.seq_len=2048", "data.batch_size=16", tiny=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (40 * 2**30, 40 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a 40 GB GPU")
    with pytest.raises(ConfigError, match=r"trainer: this run needs about [\d.]+ GiB per GPU, more than 90% of the 40 "
                                          r"GiB free of 40 GiB on a 40 GB GPU; add data.batch_size=\d+ "
                                          r"trainer.accumulate_grad_batches=\d+ "):
        check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=True)
    assert check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=False)[0].peak > 40 * 2**30  # the CPU is not refused
    cfg.trainer.check_memory = False
    check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=True)  # the user's own risk


def test_a_run_is_refused_at_the_plans_threshold_against_free_memory(compose, monkeypatch):
    from peerlab.config import ConfigError
    from peerlab.parallel.plan import _meta_model, check_run

    cfg = compose("model=d12", "layer=peer", "tokenizer=gpt2", "data.seq_len=2048", "data.batch_size=4", tiny=False)
    peak = check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=False)[0].peak  # the same plan, not checked
    # the card is larger than the peak, but what is free of it is not enough with the 10% headroom
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(peak / 0.95), 2 * peak))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a shared GPU")
    with pytest.raises(ConfigError, match=r"more than 90% of the [\d.]+ GiB free of [\d.]+ GiB on a shared GPU"):
        check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(peak / 0.85), 2 * peak))
    check_run(lambda: _meta_model(cfg), cfg, world=1, cuda=True)  # within 90% of what is free: it runs


def test_small_models_print_their_sizes_and_memory(compose):
    from peerlab.parallel.plan import plan_point, table

    row = plan_point(compose("model=tiny", "budget=1e10"), ["model=tiny"], 80.0, device="cpu")
    line = table([row]).splitlines()[-1]
    assert "0.00B" not in line and f"{row['params'] / 1e3:.3g}k" in line
    assert f"| {row['estimate_gb']:.3g} |" in line and row["estimate_gb"] < 0.1  # GiB with three digits, not 0.0


def test_trainer_auto_plans_the_device_a_run_would_take(compose, monkeypatch):
    from peerlab.parallel.plan import device_type

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_type(compose("trainer=default")) == "cpu"  # Lightning's auto on a machine without a GPU
    assert device_type(compose("trainer=default"), for_a_gpu=True) == "cuda"  # --device-gb: planning for a card
    assert device_type(compose("trainer.accelerator=gpu"), for_a_gpu=False) == "cuda"
    assert device_type(compose("trainer.accelerator=cpu"), for_a_gpu=True) == "cpu"


def test_the_plan_does_not_depend_on_triton_being_installed_here(monkeypatch):
    import peerlab.mixers.peer as peer
    from peerlab.mixers.base import Precision

    with torch.device("meta"):
        mixer = peer.PEER(d_model=256, n_experts=64**2, heads=4, k=8, d_key=32)
    plans = []
    for installed in (True, False):
        monkeypatch.setattr(peer, "triton_available", lambda installed=installed: installed)
        plans.append(mixer.activation_memory(4096, Precision(4, 2), "cuda"))
    assert plans[0] == plans[1]


def test_a_suggestion_may_switch_peer_to_its_chunked_path(compose, monkeypatch):
    import peerlab.parallel.plan
    from peerlab.parallel.plan import _meta_model, estimate, execution, model_variants, what_fits

    cfg = compose("model=d24", "layer=peer", "tokenizer=gpt2", "data.seq_len=2048", "data.batch_size=4",
                  "trainer=fsdp", "trainer.devices=8", "trainer.accumulate_grad_batches=4", "trainer.precision=bf16-mixed",
                  tiny=False)
    ex = execution(cfg, "cuda", 8)
    variants = model_variants(cfg, "cuda")
    assert [v[0] for v in variants] == [("layer.impl=chunked",)] and model_variants(cfg, "cpu") == []
    triton = estimate(_meta_model(cfg), ex).peak
    chunked = estimate(variants[0][1](), ex).peak
    assert chunked < triton  # one buffer of the used rows' sums, not two
    monkeypatch.setattr(peerlab.parallel.plan, "_candidates", lambda ex, splits=(): [])  # no change of the step itself to try
    outside = lambda e: 0  # noqa: E731  (the CUDA context and NCCL buffers are the same for both)
    change, _ = what_fits(lambda: _meta_model(cfg), ex, (chunked + triton) / 2, variants, outside)
    assert change is not None and change.overrides == ("layer.impl=chunked",) and change.estimate.peak == chunked
    assert what_fits(lambda: _meta_model(cfg), ex, (chunked + triton) / 2, outside=outside)[0] is None  # without it, nothing fits


def test_a_suggestion_considers_memory_parallelism_first_for_tables(cache_dir):
    """d24/peer at 4 x 4 with its tables gathered does not fit 40 GB; the first change that fits splits them (the
    size that moves fewest bytes), before a smaller micro-batch under plain FSDP."""
    row = json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json", "budget=2e19",
                          "model=d24", "layer=peer", "trainer.memory_parallel=1", *FIXED_4X4).stdout)[0]
    assert not row["fits"]
    assert row["suggestion"]["overrides"] == ["trainer.memory_parallel=8"]
    assert row["suggestion"]["comm_gb_per_step"] < row["comm_gb_per_step"] / 3


def test_memory_parallel_auto_is_one_without_tables_or_ranks():
    from peerlab.parallel.memory import Execution
    from peerlab.parallel.memory_parallel import choose

    with torch.device("meta"):
        from omegaconf import OmegaConf

        from peerlab.builders import build_model
        from peerlab.sizes import load_layer

        d12 = OmegaConf.load(ROOT / "configs" / "model" / "d12.yaml")
        dense, peer = (build_model(d12, load_layer(layer), 50257, 2048) for layer in ("ffw", "peer"))
    ex = Execution(strategy="fsdp", world=8, micro_batch=4, accumulate=4)
    assert choose(dense, ex) == 1 and choose(peer, ex) == 8
    assert choose(peer, Execution(strategy="ddp", world=8)) == 1 and choose(peer, Execution(strategy="fsdp", world=1)) == 1


def test_step_time_and_gpu_hours_follow_their_counts():
    """The time model's parts are the plan's own counts over the card's constants: matmul FLOPs at the assumed share
    of the peak, the optimizer's bytes at HBM bandwidth, the plan's bytes at NCCL's bus bandwidth."""
    from omegaconf import OmegaConf

    from peerlab.builders import build_model
    from peerlab.flops import flops_breakdown
    from peerlab.parallel.memory import Execution
    from peerlab.parallel.step_time import ADAMW_BYTES, GPUS, MATMUL_EFFICIENCY, step_time
    from peerlab.parallel.traffic import comm_bytes
    from peerlab.sizes import load_layer

    with torch.device("meta"):
        dense = build_model(OmegaConf.load(ROOT / "configs" / "model" / "d12.yaml"), load_layer("ffw"), 50257, 2048)
    ex = Execution(strategy="fsdp", world=8, micro_batch=4, accumulate=4, loss_chunk_tokens=8192)
    gpu = GPUS["h100"]
    flops = flops_breakdown(dense).train
    t = step_time(dense, ex, flops, gpu)
    tokens = 4 * 4 * 2048
    assert t.matmul_s == pytest.approx((flops * tokens / (989.4e12 * MATMUL_EFFICIENCY[1]),
                                        flops * tokens / (989.4e12 * MATMUL_EFFICIENCY[0])))
    held = sum(math.ceil(q.numel() / 8) for q in dense.parameters())  # FSDP's padded shards of 8
    assert t.tables_s == pytest.approx(held * ADAMW_BYTES / 3.35e12)  # no tables: the optimizer
    assert t.comm_s == pytest.approx(sum(comm_bytes(dense, ex).values()) / 470e9)
    assert t.step_s == (max(t.matmul_s[0] + t.tables_s, t.comm_s), t.matmul_s[1] + t.tables_s + t.comm_s)
    row = json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--gpu", "h100", "--json", "budget=6e18",
                          "model=d12", "layer=ffw", *FIXED_4X4).stdout)[0]
    assert row["device_gb"] == 80 and row["step_s"] == pytest.approx(list(t.step_s))
    assert row["gpu_hours"] == pytest.approx([row["steps"] * s * 8 / 3600 for s in t.step_s])
    assert row["tokens_per_s"] == pytest.approx([128 * 2048 / s for s in reversed(t.step_s)])
    assert row["sweep_gpu_hours"] == pytest.approx(row["gpu_hours"])  # a sweep of one point


def test_the_docs_list_the_cards_the_time_model_knows():
    from peerlab.parallel.step_time import constants_table

    assert constants_table().strip() in (ROOT / "docs" / "scale-out.md").read_text()


@pytest.mark.parametrize("layer,expected", [("peer_small", 2), ("ffw", 1)])
def test_a_run_settles_memory_parallel_auto_from_its_plan(compose, layer, expected):
    """train.run takes the M its plan settles (check_run's execution) for trainer.memory_parallel=auto."""
    from peerlab.parallel.plan import _meta_model, check_run

    cfg = compose(f"layer={layer}", "trainer=fsdp", "trainer.devices=2", "trainer.accelerator=cpu",
                  "trainer.memory_parallel=auto")
    _, ex = check_run(lambda: _meta_model(cfg), cfg, world=2, cuda=False)
    assert ex.memory_parallel == expected


def test_the_docs_show_the_committed_grid_tables():
    committed = (ROOT / "experiments" / "results" / "memory" / "isoflop_paper.md").read_text().split("\n\n")
    docs = (ROOT / "docs" / "scale-out.md").read_text()
    assert all(committed[i].strip() in docs for i in (1, 3, 5))  # the grid as it runs, fixed ways, the 16M rows


@pytest.mark.slow
def test_the_committed_grid_tables_are_what_the_planner_prints_now():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "memory_table.py")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    committed = (ROOT / "experiments" / "results" / "memory" / "isoflop_paper.md").read_text()
    assert proc.stdout == committed, "rerun: python experiments/memory_table.py > experiments/results/memory/isoflop_paper.md"


@pytest.mark.parametrize("name,gib,expected", [("NVIDIA H100 80GB HBM3", 79.1, "h100"), ("NVIDIA H200", 139.8, "h200"),
                                                ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40"),
                                                ("NVIDIA A100-SXM4-80GB", 79.2, "a100-80"), ("NVIDIA L4", 22.0, None)])
def test_gpu_scale_matches_the_visible_card_to_the_time_models_figures(monkeypatch, name, gib, expected):
    from types import SimpleNamespace

    import torch

    from benchmarks.gpu_scale import card

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(total_memory=gib * 2**30))
    assert card() == expected


def test_the_schema_the_strategies_and_the_memory_model_know_the_same_precisions():
    """One list: every precision the schema accepts has byte sizes in the memory model (a precision the memory model
    lacked crashed the planner with a traceback), and FSDP's are a subset of it."""
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    from peerlab.config import FSDP_PRECISIONS, PRECISION_ALIASES, PRECISIONS
    from peerlab.parallel.memory import BYTES

    assert set(BYTES) == set(PRECISIONS) and set(FSDP_PRECISIONS) <= set(PRECISIONS)
    assert set(PRECISION_ALIASES.values()) <= set(PRECISIONS)
    assert set(PRECISIONS) <= set(_PRECISION_INPUT_STR.__args__)  # names Lightning knows


def test_every_precision_lightning_names_either_plans_or_is_refused_in_one_line(compose):
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    from peerlab.config import ConfigError, precision_name, validate
    from peerlab.parallel.plan import plan_point

    for name in _PRECISION_INPUT_STR.__args__:
        cfg = compose(f"trainer.precision={name}")
        try:
            validate(cfg)
        except ConfigError as exc:
            assert str(exc).startswith(f"trainer.precision={name!r}") and "\n" not in str(exc)
            continue
        assert plan_point(cfg, [], 80.0, device="cuda")["precision"] == precision_name(name)


def test_the_cuda_context_and_nccls_buffers_are_counted_per_process_group():
    """peerlab.parallel.cuda_overhead: the cited figures, one NCCL communicator per group that runs collectives, the
    all-to-all's channels only where split tables use it, nothing off CUDA; the fit test adds them to the peak."""
    from peerlab.parallel.cuda_overhead import CUDA_CONTEXT, NCCL_ALL_TO_ALL, NCCL_COMMUNICATOR, overhead

    more, two = NCCL_COMMUNICATOR["more"], NCCL_COMMUNICATOR[2]
    assert overhead("cpu", "fsdp", 8, 8) == {}
    assert overhead("cuda", "single", 1) == {"CUDA context": CUDA_CONTEXT}
    assert overhead("cuda", "ddp", 8) == {"CUDA context": CUDA_CONTEXT, "NCCL communicators": more}
    assert overhead("cuda", "fsdp", 8) == {"CUDA context": CUDA_CONTEXT, "NCCL communicators": 2 * more}
    assert overhead("cuda", "fsdp", 8, 8) == {"CUDA context": CUDA_CONTEXT, "NCCL communicators": 3 * more,
                                              "NCCL all-to-all": NCCL_ALL_TO_ALL}
    assert overhead("cuda", "fsdp", 8, 2)["NCCL communicators"] == 3 * more + two  # the tables' pairs, 4 replicas
    row = json.loads(plan("-cd", "experiments", "-cn", "isoflop_paper", "--device-gb", "40", "--json", "budget=6e18",
                          "model=d12", "layer=peer").stdout)[0]
    assert row["overhead_gb"] * 2**30 == pytest.approx(CUDA_CONTEXT + 3 * more + NCCL_ALL_TO_ALL)
    assert row["fits"] == (row["estimate_gb"] + row["overhead_gb"] <= 0.9 * 40)
