"""Sweeps: a sweep file through Hydra multirun, skip-on-rerun, analysis; launcher configs; DDP on 2 CPU processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import CONFIGS, TINY, run_train
from peerlab.analysis.collect import Run
from peerlab.analysis.isoflop import fit_optimum

SWEEP = """
defaults:
  - train
  - _self_
hydra:
  sweep:
    dir: {out}/sweeps/tiny
  sweeper:
    params:
      model: tiny,d2,d3
      layer: ffw,peer_small
      budget: 2.5e10
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny_sweep.yaml").write_text(SWEEP.format(out=root))
    args = ["-m", "-cd", str(root), "-cn", "tiny_sweep", *TINY[1:], f"out_dir={root}"]
    proc = run_train(*args, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = root / "sweeps" / "tiny"
    assert proc.stdout.startswith(f"sweep: {sweep_dir} (where it stands: python -m peerlab.sweeps status {sweep_dir})")
    return root, args


def results(root: Path) -> dict[str, dict]:
    return {str(p.parent): json.loads(p.read_text()) for p in (root / "sweeps" / "tiny").rglob("results.json")}


def test_sweep_file_runs_every_point(sweep):
    root, _ = sweep
    found = results(root)
    assert len(found) == 6
    assert {(r["config"]["model"]["name"], r["config"]["layer"]["name"]) for r in found.values()} == {
        (m, layer) for m in ("tiny", "d2", "d3") for layer in ("ffw", "peer_small")}
    assert all(r["status"] == "completed" for r in found.values())


def test_rerunning_a_sweep_skips_completed_points(sweep):
    root, args = sweep
    before = results(root)
    victim = sorted(before)[0]
    Path(victim, "results.json").unlink()  # as if that point had crashed before finishing
    proc = run_train(*args, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = results(root)
    assert after.keys() == before.keys()
    for path, r in after.items():
        if path == victim:
            assert r["status"] == "completed"  # reran (resumed from its last checkpoint)
        else:
            assert r["wall_time_s"] == before[path]["wall_time_s"]  # untouched


def test_analysis_fits_and_draws(sweep, tmp_path):
    from peerlab.analysis.__main__ import main

    root, _ = sweep
    assert main([str(root / "sweeps"), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table1.md").read_text()
    assert "| 2.5e10 | ffw |" in table and "| 2.5e10 | peer_small |" in table
    for png in ("isoflop.png", "loss_vs_flops.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    optima = json.loads((tmp_path / "optima.json").read_text())
    assert {o["method"] for o in optima} == {"ffw", "peer_small"}
    assert all(len(o["sizes"]) == 3 for o in optima)
    rows = [line for line in (tmp_path / "runs.md").read_text().splitlines()[2:] if line]
    assert len(rows) == sum(1 for _ in (root / "sweeps").rglob("results.json"))
    assert all(row.startswith("| 2.5e10 |") for row in rows)
    # model.depth pools tiny and d2 (both depth 2, of other widths): refused rather than reported as a seed spread
    assert main([str(root / "sweeps"), "--out", str(tmp_path / "abl"), "--ablation", "model.depth", "--series", "layer.name"]) == 2
    assert main([str(root / "sweeps"), "--out", str(tmp_path / "abl"), "--ablation", "model.aspect_ratio", "--series",
                 "layer.name", "--where", "model.depth=2"]) == 0  # tiny (32) and d2 (64): one run per cell
    assert "| ffw | 32 | 1 |" in (tmp_path / "abl" / "ablation.md").read_text()
    # A categorical key (here the layer's name) is drawn as categories.
    assert main([str(root / "sweeps"), "--out", str(tmp_path / "cat"), "--ablation", "layer.name"]) == 2  # 3 sizes pooled
    assert main([str(root / "sweeps"), "--out", str(tmp_path / "cat"), "--ablation", "layer.name", "--where",
                 "model.name=d3"]) == 0
    assert (tmp_path / "cat" / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_best_size_at_a_grid_edge_is_not_bracketed_even_when_the_vertex_falls_inside():
    # Through (0, 1.0), (1, 1.1), (2, 1.5) the parabola's vertex is at x = 1/6, inside the grid, but nothing was
    # observed left of the best point: the minimum is not bracketed.
    runs = [Run(Path("."), "ffw", 1e12, 10.0**x, y, 0, {}) for x, y in [(0, 1.0), (1, 1.1), (2, 1.5)]]
    o = fit_optimum("ffw", 1e12, runs)
    assert not o.interior and o.size == pytest.approx(1.0) and o.loss == 1.0 and o.loss_std is None


def test_parabola_fit_recovers_a_known_optimum():
    rng = np.random.default_rng(0)
    sizes = np.logspace(6, 8, 5)
    true_x, true_loss = 7.2, 3.0
    runs = []
    for s in sizes:
        for seed in range(3):
            loss = 0.5 * (math.log10(s) - true_x) ** 2 + true_loss + rng.normal(0, 0.002)
            runs.append(Run(Path("."), "peer", 1e19, float(s), loss, seed, {}))
    o = fit_optimum("peer", 1e19, runs)
    assert o.interior and math.log10(o.size) == pytest.approx(true_x, abs=0.02)
    assert o.loss == pytest.approx(true_loss, abs=0.005)
    assert 0 < o.loss_std < 0.01 and 0 < o.size_std_log10 < 0.05
    below = [r for r in runs if r.params < 10**7.1]  # three sizes, all below the optimum at 10^7.2
    edge = fit_optimum("peer", 1e19, below)
    assert not edge.interior  # the best size is the grid edge: reported as best observed, no parabola through it
    assert edge.size == pytest.approx(max(r.params for r in below))
    assert edge.loss_std is None and edge.size_std_log10 is None


@pytest.mark.parametrize("launcher,target,key,value", [
    ("slurm", "hydra_plugins.peerlab_launcher.SlurmLauncher", "timeout_min", 2880),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs", -1),
])
def test_launcher_configs_compose(launcher, target, key, value):
    from hydra import compose, initialize_config_dir

    from peerlab.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.launcher[key] == value


# PEER with sparse (row-wise) expert-table gradients, which the module averages outside DDP's reducer; LayerNorm
# queries, because BatchNorm statistics over 4 tokens per rank differ from those over 8 in one process.
PEER_DDP = ["layer=peer_small", "layer.n_experts=256", "layer.d_key=16", "layer.query_norm=layer",
            "layer.sparse_grads=auto"]


@pytest.mark.slow
@pytest.mark.parametrize("layer", [[], PEER_DDP], ids=["ffw", "peer-auto-grads"])
def test_ddp_two_cpu_processes_count_the_same_flops(tmp_path, cache_dir, layer):
    common = [*TINY, *layer, "budget=1.3e10", f"out_dir={tmp_path}", "logger=csv"]
    single = run_train(*common, "data.batch_size=8", "run_name=single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_train(*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4",
                    "run_name=ddp", cwd=tmp_path, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = json.loads((tmp_path / "single" / "results.json").read_text())
    b = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert b["world_size"] == 2 and a["tokens_per_step"] == b["tokens_per_step"] == 8 * 32
    assert (a["steps"], a["tokens"], a["flops"]) == (b["steps"], b["tokens"], b["flops"])
    import csv

    def last_flops(run):
        with open(tmp_path / run / "csv" / "metrics.csv") as fh:
            return max(float(r["flops"]) for r in csv.DictReader(fh) if r.get("flops"))

    assert last_flops("single") == last_flops("ddp") == pytest.approx(a["flops"])
    # the same samples in the same steps: only the order of float sums differs (measured ~5e-8; a bug that made both
    # ranks read the same samples moved it by 0.02)
    assert abs(a["final_val_loss"] - b["final_val_loss"]) < 1e-6
    if layer:
        # sparse_grads=auto: per-step in one process, sparse rows under gloo, exactly what forcing true trains.
        assert a["expert_grads"] == {"block0": "sparse row gradients (dense in a step that retrieves all N rows)"}
        assert b["expert_grads"] == {"block0": "sparse row gradients"}
        forced = run_train(*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4",
                           "layer.sparse_grads=true", "run_name=ddp-true", cwd=tmp_path, timeout=900)
        assert forced.returncode == 0, forced.stderr[-3000:]
        c = json.loads((tmp_path / "ddp-true" / "results.json").read_text())
        assert c["final_val_loss"] == b["final_val_loss"]


@pytest.mark.parametrize("sweep_file", sorted(p.stem for p in (CONFIGS.parent / "experiments").glob("*.yaml")))
def test_committed_sweep_files_compose(sweep_file, tmp_path):
    proc = run_train("-cd", str(CONFIGS.parent / "experiments"), "-cn", sweep_file, "--cfg", "all", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweeper:" in proc.stdout and "params:" in proc.stdout


def test_power_laws_gaps_and_crossing_from_known_optima():
    from peerlab.analysis.scaling import fit_power_laws, gaps_to
    from peerlab.analysis.tables import scaling_table

    budgets = [1e12, 1e13, 1e14]
    runs = []
    # dense: 10 C^-0.05; sparse: 12 C^-0.06, which crosses dense where 12/10 = C^0.01, at C = 1.2^100 = 8.28e7.
    for method, a, alpha in [("ffw", 10.0, 0.05), ("peer", 12.0, 0.06)]:
        for b in budgets:
            best = a * b ** (-alpha)
            runs += [Run(Path("."), method, b, 10.0**x, best + 0.3 * (x - 7) ** 2, 0, {}) for x in (6, 7, 8)]
    opts = [fit_optimum(m, b, [r for r in runs if r.method == m and r.budget == b]) for m in ("ffw", "peer") for b in budgets]
    assert all(o.interior for o in opts)
    laws = fit_power_laws(opts)
    assert laws["ffw"].alpha == pytest.approx(0.05, rel=1e-6) and laws["peer"].a == pytest.approx(12.0, rel=1e-6)
    (gap,) = gaps_to(laws)
    assert gap.method == "peer" and gap.gaps == pytest.approx([12 * b ** -0.06 - 10 * b ** -0.05 for b in budgets])
    assert gap.slope_per_decade < 0 and gap.crossing_budget == pytest.approx(1.2**100, rel=1e-6)
    assert not gap.crossing_inside
    assert "| peer | 1e12: " in scaling_table(laws, [gap])


def test_seed_spread_is_reported_at_the_size_nearest_the_optimum():
    runs = [Run(Path("."), "ffw", 1e12, 10.0**x, 1.0 + 0.1 * (x - 1) ** 2 + d, s, {})
            for x in (0, 1, 2) for s, d in enumerate((0.0, 0.02, -0.02) if x == 1 else (0.0,))]
    o = fit_optimum("ffw", 1e12, runs)
    assert o.seeds == [1, 3, 1] and o.best_index == 1 and o.seed_std == pytest.approx(0.02)


def test_gap_in_seed_standard_deviations():
    from peerlab.analysis.scaling import fit_power_laws, gaps_to

    runs = []
    for method, base, spread in [("ffw", 1.0, 0.03), ("peer", 0.9, 0.04)]:
        for x in (0, 2):
            runs.append(Run(Path("."), method, 1e12, 10.0**x, base + 0.5, 0, {}))
        runs += [Run(Path("."), method, 1e12, 10.0, base + d, s, {}) for s, d in enumerate((-spread, 0.0, spread))]
    opts = [fit_optimum(m, 1e12, [r for r in runs if r.method == m]) for m in ("ffw", "peer")]
    assert [o.seed_std for o in opts] == pytest.approx([0.03, 0.04])
    (gap,) = gaps_to(fit_power_laws(opts))
    # best observed sizes are the seeded ones: gap -0.1 over the spread of the difference, hypot(0.03, 0.04) = 0.05
    assert not opts[0].interior or gap.gaps[0] == pytest.approx(opts[1].loss - opts[0].loss)
    assert gap.z[0] == pytest.approx(gap.gaps[0] / 0.05)


def test_the_parabola_is_fitted_near_the_best_size_only():
    # Loss rises gently below the optimum and steeply above it (as in the matched study); a parabola through all
    # six sizes would put its vertex above the best observed loss. The local fit goes through the best size.
    xs = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ys = [1.10, 1.00, 1.05, 1.30, 1.70, 2.30]
    runs = [Run(Path("."), "ffw", 1e12, 10.0**x, y, 0, {}) for x, y in zip(xs, ys, strict=True)]
    o = fit_optimum("ffw", 1e12, runs)
    assert o.interior and o.loss <= 1.00 and 10**0.0 < o.size < 10**0.4
    assert o.losses == ys  # every size is still reported


def test_ablation_rows_against_a_baseline_value_in_seed_standard_deviations():
    from peerlab.analysis.tables import ablation_table

    def run(layer, fraction, seed, loss):
        return Run(Path("."), layer, 1e12, 1.0, loss, seed, {"config": {"layer": {"name": layer}, "data": {"train_fraction": fraction}}})

    # ffw: baseline 3.00 (sd 0.03), half the data 3.10 (sd 0.04): +0.1 over hypot(0.03, 0.04) = 0.05 -> +2.0 sd
    runs = [run("ffw", 1.0, s, 3.0 + d) for s, d in enumerate((-0.03, 0.0, 0.03))]
    runs += [run("ffw", 0.5, s, 3.1 + d) for s, d in enumerate((-0.04, 0.0, 0.04))]
    runs += [run("peer", 0.5, 0, 2.9)]  # a series without its baseline row says so
    table = ablation_table(runs, "data.train_fraction", "layer.name", baseline="1.0").splitlines()
    assert table[0].endswith("| loss - loss at 1.0 |")
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table[2:]}
    assert rows[("ffw", "0.5")].endswith("| 3.1000 (0.0400) | +0.1000 (+2.0 sd) |")
    assert rows[("ffw", "1.0")].endswith("| 3.0000 (0.0300) | - |")
    assert rows[("peer", "0.5")].endswith("| no baseline row |")


def test_baseline_without_an_ablation_is_refused(tmp_path, capsys):
    from peerlab.analysis.__main__ import main

    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--baseline", "1.0"])
    assert info.value.code == 2 and "--baseline needs --ablation" in capsys.readouterr().err


def test_per_source_table_sets_each_method_against_the_best_seeded_dense_point():
    from peerlab.analysis.per_source import seeded_points, table

    runs = [Run(Path("."), m, 1e12, size, 3.0, seed, {}) for m, size, seeds in
            [("ffw", 1e6, 3), ("ffw", 2e6, 3), ("peer", 1e6, 3), ("peer", 2e6, 1)] for seed in range(seeds)]
    assert sorted(seeded_points(runs, 3)) == [(1e12, "ffw", 1e6), (1e12, "ffw", 2e6), (1e12, "peer", 1e6)]
    losses = {
        (1e12, "ffw", 1e6): [{"a": 3.0 + d, "b": 4.0 + d} for d in (-0.03, 0.0, 0.03)],
        (1e12, "ffw", 2e6): [{"a": 3.5, "b": 4.5}] * 3,  # the worse dense point is not the reference
        (1e12, "peer", 1e6): [{"a": 2.9 + d, "b": 4.0 + d} for d in (-0.04, 0.0, 0.04)],
    }
    rows = {line.split("|")[2].strip() + line.split("|")[3].strip(): line for line in table(losses).splitlines()[2:]}
    # source a: -0.1 over hypot(0.03, 0.04) = 0.05 -> -2.0 sd; source b: no difference
    assert "| 2.9000 (0.0400) | -0.1000 (-2.0 sd) | 4.0000 (0.0400) | +0.0000 (+0.0 sd) |" in rows["peer1M"]


def test_where_filters_runs_and_a_predated_key_reads_as_its_neutral_value(tmp_path):
    from peerlab.analysis.__main__ import matches, parse_where

    old = Run(Path("."), "ffw", 2e12, 1e6, 3.0, 0, {"config": {"data": {"sources": ["lee"]}, "model": {"name": "s2"}}})
    assert old.config_value("data.train_fraction") == 1.0 and old.config_value("data.nope") is None
    assert old.config_value("budget") == 2e12 and matches(old.config_value("budget"), "2e12")
    assert matches(old.config_value("model.name"), "s2") and not matches(old.config_value("model.name"), "s3")
    assert matches(old.config_value("data.train_fraction"), "1.0") and not matches(True, "1")
    assert parse_where("model.name=s2") == ("model.name", "s2")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_where("budget")


def test_pairwise_table_orders_every_pair_in_seed_standard_deviations():
    from peerlab.analysis.tables import pairwise_table

    runs = []
    for method, base, spread in [("ffw", 1.0, 0.03), ("moe", 0.8, 0.0), ("peer", 0.9, 0.04)]:
        for x in (0, 2):
            runs.append(Run(Path("."), method, 1e12, 10.0**x, base + 0.5, 0, {}))
        seeds = (-spread, 0.0, spread) if spread else (0.0,)
        runs += [Run(Path("."), method, 1e12, 10.0, base + d, s, {}) for s, d in enumerate(seeds)]
    opts = [fit_optimum(m, 1e12, [r for r in runs if r.method == m]) for m in ("ffw", "moe", "peer")]
    rows = pairwise_table(opts).splitlines()[2:]
    assert len(rows) == 3
    ffw_peer = next(r for r in rows if "| ffw | peer |" in r)
    diff = opts[0].loss - opts[2].loss
    from scipy.stats import ttest_ind

    # the same seeds, as samples: Welch's test on them gives the table's p-value
    p = ttest_ind([1.0 - 0.03, 1.0, 1.0 + 0.03], [0.9 - 0.04, 0.9, 0.9 + 0.04], equal_var=False).pvalue
    assert f"| {diff:+.4f} | {diff / 0.05:+.1f} | {p:.2g} | peer < ffw |" in ffw_peer  # hypot(0.03, 0.04) = 0.05
    assert "- (one seed) | - |" in next(r for r in rows if "| ffw | moe |" in r)


def test_an_ablation_cell_may_differ_in_its_seed_only():
    from peerlab.analysis.__main__ import check_ablation

    def run(layer, model, seed, loss=3.0):
        return Run(Path("."), layer, 1e12, 1.0, loss, seed, {"config": {"layer": {"name": layer}, "model": {"name": model},
                                                                        "seed": seed, "budget": 1e12}})

    pooled = [run("peer", m, 0) for m in ("nano", "micro", "tiny")] + [run("ffw", "nano", 0)]
    line = check_ablation(pooled, "layer.name", None)
    assert line.startswith("--ablation layer.name: the runs at layer.name=peer differ in model.name")
    assert "--series model.name" in line
    assert check_ablation(pooled, "layer.name", "model.name") is None  # split by size: each cell one run
    seeds = [run("peer", "nano", s) for s in range(3)]
    assert check_ablation(seeds, "layer.name", None) is None  # seeds only: a real seed spread
    assert check_ablation(seeds, "layer", None).startswith("--ablation layer: a whole config node")
    assert check_ablation(seeds, "nope.key", None).startswith("--ablation nope.key: no run has that config key")


def test_a_run_shorter_than_one_validation_period_still_has_its_final_point(tmp_path):
    from peerlab.analysis.figures import run_curve

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,train/loss,flops\n0,5.0,1e9\n")
    (tmp_path / "results.json").write_text(json.dumps({"flops": 2e9, "final_val_loss": 4.5}))
    assert run_curve(tmp_path) == ([], (2e9, 4.5))


def test_a_local_sweep_reports_where_it_stands_and_multirun_names_its_folder(sweep):
    from peerlab.sweeps import status

    root, args = sweep
    found = status.sweep_points(root / "sweeps" / "tiny")
    assert len(found) == 6 and {p.state for p in found} == {"done"}
    assert status.summary(found) == "6/6 done"
    victim = next((root / "sweeps" / "tiny").glob("*/results.json"))
    record = json.loads(victim.read_text())
    victim.write_text(json.dumps({**record, "status": "interrupted"}))
    try:
        line = status.summary(status.sweep_points(root / "sweeps" / "tiny"))
        assert line.startswith("5/6 done, 1 interrupted\n  interrupted: ") and "log: " in line
    finally:
        victim.write_text(json.dumps(record))


def test_the_watcher_ends_the_launchers_wait_even_where_sigint_is_ignored(tmp_path):
    # A sweep started with `cmd &` from a script inherits SIGINT ignored; the watcher's interrupt_main, which stops
    # submitit's wait for a job that left no result, then did nothing and the sweep waited forever.
    import _thread
    import signal
    import time

    from peerlab.sweeps.launcher import Watcher

    def wait_a_little():
        for _ in range(50):
            time.sleep(0.01)

    watcher = Watcher(tmp_path, ["a"], str(tmp_path / ".submitit" / "%j"))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _thread.interrupt_main()
        wait_a_little()  # no handler: nothing happens (the hang)
        with watcher.interruptible():
            _thread.interrupt_main()
            wait_a_little()  # a SIGINT the process was told to ignore is still ignored
            watcher.gave_up = True
            with pytest.raises(KeyboardInterrupt):
                _thread.interrupt_main()
                wait_a_little()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_plain_multirun_resumes_in_the_same_folder(tmp_path, cache_dir):
    """``-m`` without a sweep file: the same command finds the same sweep folder, so a finished point is skipped
    and one whose results were lost resumes from its checkpoint (lightning-hydra-template's "Resume multi-run")."""
    args = ["-m", *TINY, "logger=csv", f"out_dir={tmp_path}", "budget=3e9,4e9"]
    first = run_train(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    points = sorted(sweep_dir.glob("*/results.json"))
    assert len(points) == 2
    points[0].unlink()  # as if that point had been interrupted after its last checkpoint
    again = run_train(*args[:-1], "budget=3e9,4e9", "trainer.progress_bar=false", cwd=tmp_path)  # same sweep
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == [sweep_dir.name]
    assert sum(line.startswith("already complete: ") for line in again.stdout.splitlines()) == 1 and "resuming from" in (points[0].parent / "train.log").read_text()


def test_sweep_names_follow_the_overrides_not_their_order_or_cosmetic_keys():
    from peerlab.config import sweep_name

    a = sweep_name(["layer=ffw,peer", "budget=1e12"])
    assert a == sweep_name(["budget=1e+12", "layer=ffw,peer", "trainer.progress_bar=false", "logger=csv",
                            "hydra/launcher=joblib", "out_dir=/x"])
    assert a != sweep_name(["layer=ffw,peer", "budget=2e12"])
    named = sweep_name(["data=files", "data.files=[/data/a.jsonl]", "model=" + "x" * 300])
    assert "/" not in named and len(named.encode()) <= 89
