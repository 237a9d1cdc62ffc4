"""W&B as users read it, all offline: a 2 x 2 multirun's runs grouped, tagged and summarised in their .wandb files;
the dashboard spec naming only keys those runs have (and refusing one that names another); --save against a stand-in
API; the analysis run with Table 1; resumed runs logging each step once; API-key detection as wandb 0.31 stores it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import TINY, run_train
from peerlab import wandb_offline
from peerlab.config import sci


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> Path:
    """A 2 x 2 multirun (dense and PEER at two budgets), W&B offline: the sweep's folder."""
    root = tmp_path_factory.mktemp("wandb-sweep")
    proc = run_train("-m", *TINY, "layer=ffw,peer_small", "budget=6e9,8e9", f"out_dir={root}",
                     "hydra.sweep.dir=" + str(root / "isoflop_tiny"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done:" in proc.stdout
    return root / "isoflop_tiny"


def results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]


def test_a_2x2_multirun_is_four_runs_grouped_tagged_and_summarised_on_w_and_b(sweep):
    from peerlab.train import SUMMARY_KEYS

    found = results(sweep)
    assert {(r["config"]["layer"]["name"], r["budget"]) for r in found} == {
        (layer, b) for layer in ("ffw", "peer_small") for b in (6e9, 8e9)}
    assert all(r["status"] == "completed" for r in found)
    for r in found:
        (folder,) = r["wandb_dirs"]
        assert r["wandb_sync"] == f"wandb sync {folder}"
        info = wandb_offline.run_info(folder)
        assert info["group"] == "isoflop_tiny" and info["job_type"] == "train"
        assert info["tags"] == [r["config"]["layer"]["name"], "tiny", sci(r["budget"])]
        summary = wandb_offline.summary(folder)
        for key in SUMMARY_KEYS:
            assert summary[key] == r[key], key  # the run table's columns are results.json's values
        assert summary["params_dense_backbone"] == r["params_dense_backbone"] > 0
        assert summary["final/val/loss"] == r["final_val_loss"]
        config = wandb_offline.config(folder)
        assert config["params/dense_backbone"] == r["params_dense_backbone"]
        assert config["params/active"] == r["params_active"] and config["layer"]["name"] == r["config"]["layer"]["name"]


def test_a_single_run_has_no_group_and_a_multirun_point_has_its_sweeps(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from peerlab.train import sweep_group

    assert sweep_group() is None  # outside Hydra; logger.wandb.group still sets one
    hydra = OmegaConf.create({"mode": RunMode.RUN, "sweep": {"dir": str(tmp_path / "sweeps" / "isoflop_cpu")}})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra))
    assert sweep_group() is None  # a single run under Hydra
    hydra.mode = RunMode.MULTIRUN
    assert sweep_group() == "isoflop_cpu"  # a sweep's point: the sweep folder's name


def dashboard(sweep: Path, *args: str) -> tuple[int, dict | None]:
    from peerlab.dashboard import main

    out = sweep.parent / "dashboard.json"
    try:
        code = main([str(sweep), "--entity", "team", "--out", str(out), *args])
    except SystemExit as exc:
        code = exc.code
    return code, (json.loads(out.read_text()) if code == 0 and out.exists() else None)


def test_the_dashboard_names_only_keys_the_runs_recorded(sweep, capsys):
    from peerlab.dashboard import spec_keys, sweep_keys

    code, spec = dashboard(sweep)
    assert code == 0, capsys.readouterr().err
    assert [v["name"] for v in spec["workspaces"]] == ["isoflop_tiny at 6e9 FLOPs", "isoflop_tiny at 8e9 FLOPs"]
    needed = set().union(*(spec_keys(v["spec"]) for v in spec["workspaces"])) | spec_keys(spec["report"])
    # what the runs recorded, read here straight from their files (not through the dashboard's reader)
    have = {"history": set(), "summary": set(), "config": set()}
    for r in results(sweep):
        folder = r["wandb_dirs"][0]
        for row in wandb_offline.history(folder):
            have["history"] |= set(row)
        have["summary"] |= set(wandb_offline.summary(folder))
        config = wandb_offline.config(folder)
        have["config"] |= set(config) | {f"{k}.{sub}" for k, v in config.items() if isinstance(v, dict) for sub in v}
    assert {(kind, key) for kind, key in needed if key not in have[kind]} == set()
    assert sweep_keys(sweep).runs == 4
    # the paper's views are all there: loss and usage against FLOPs, the isoFLOP axes, the run table
    for key in [("history", "flops"), ("history", "train/loss"), ("history", "val/loss"), ("history", "tok/s"),
                ("history", "val/expert_usage"), ("history", "val/unevenness"), ("summary", "params_dense_backbone"),
                ("summary", "final/val/loss"), ("summary", "status"), ("config", "layer.name"), ("config", "budget")]:
        assert key in needed, key
    panels = re.findall(r'"(?:xAxis|yAxis)": "summary:([^"]+)"', json.dumps(spec["workspaces"][0]))
    assert panels == ["params_dense_backbone", "final/val/loss"]  # the isoFLOP scatter, log x
    filters = spec["workspaces"][1]["spec"]["section"]["runSets"][0]["filters"]["filters"]
    budgets = [f["value"] for f in filters if f["key"]["name"] == "budget"]
    assert budgets == [8e9]
    # the view's Group and JobType filters select these very runs, as their own .wandb files record them
    recorded = {(i["group"], i["job_type"]) for i in (wandb_offline.run_info(r["wandb_dirs"][0]) for r in results(sweep))}
    by_key = {f["key"]["name"]: f["value"] for f in filters}
    assert recorded == {(by_key["group"], by_key["jobType"])}
    def run_sets(node):
        if isinstance(node, dict):
            yield from node.get("runSets", [])
            for v in node.values():
                yield from run_sets(v)
        elif isinstance(node, list):
            for v in node:
                yield from run_sets(v)

    report_filters = [{f["key"]["name"]: f["value"] for f in rs["filters"]["filters"]} for rs in run_sets(spec["report"])]
    train_sets = [f for f in report_filters if f.get("jobType") == "train"]
    assert train_sets and all(f["group"] == by_key["group"] for f in train_sets)
    assert {(f["group"], f["jobType"]) for f in report_filters} == {(by_key["group"], "train"), (by_key["group"], "analysis")}


def test_preview_draws_every_panel_of_each_view(sweep, capsys):
    from peerlab.dashboard_preview import draw, load_runs

    code, spec = dashboard(sweep, "--preview")
    out = capsys.readouterr().out
    assert code == 0
    for budget in ("6e9", "8e9"):
        png = sweep.parent / f"dashboard-{budget}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"drew {png}" in out
    view = spec["workspaces"][0]
    panels = sum(len(s["panels"]) for s in view["spec"]["section"]["panelBankConfig"]["sections"])
    assert draw(view, load_runs(sweep), sweep.parent / "again.png") == panels == 7


@pytest.mark.parametrize("where,value,named", [
    ("LOSS", ("train/loss", "val/perplexity"), "history 'val/perplexity'"),
    ("TABLE_COLUMNS", ("config:layer.name", "summary:final_loss"), "summary 'final_loss'"),
    ("TABLE_COLUMNS", ("layer.name",), "column 'layer.name'"),  # an unprefixed column names no key of a run
    ("GROUPS", ("layer.nam",), "config 'layer.nam'"),
    ("SIZE", "params_backbone", "summary 'params_backbone'"),
])
def test_a_spec_naming_a_key_no_run_has_is_refused(sweep, capsys, monkeypatch, where, value, named):
    import peerlab.dashboard as d

    monkeypatch.setattr(d, where, value)
    code, _ = dashboard(sweep)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert named in err and "no run of sweep 'isoflop_tiny' has" in err


def without_ids(node):
    """A spec without the random ids each build gives its panels and run sets."""
    if isinstance(node, dict):
        return {k: without_ids(v) for k, v in node.items() if k not in ("__id__", "id")}
    if isinstance(node, list):
        return [without_ids(v) for v in node]
    return node


class StandInApi:
    """``wandb.Api`` as ``wandb-workspaces`` uses it: GraphQL through ``_service_api``, projects, the app URL."""

    calls: list = []

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["_service_api"] = self

    app_url = "https://wandb.example"

    def execute_graphql(self, query: str, variables: dict) -> dict:
        StandInApi.calls.append(("graphql", query.split("(")[0].split()[-1], variables))
        n = len(StandInApi.calls)
        view = {"id": f"id{n}", "name": variables.get("name") or f"view{n}", "type": variables["type"],
                "displayName": variables.get("displayName") or "", "description": variables.get("description") or "",
                "project": {"id": "p", "name": variables["projectName"], "entityName": variables["entityName"]},
                "spec": variables["spec"], "updatedAt": None}
        return {"upsertView": {"view": view, "inserted": True}}

    def projects(self, entity: str):
        StandInApi.calls.append(("projects", entity))
        return []

    def create_project(self, name: str, entity: str):
        StandInApi.calls.append(("create_project", name, entity))


def test_save_uploads_each_view_and_the_report_and_prints_their_urls(sweep, capsys, monkeypatch):
    import wandb

    code, spec = dashboard(sweep)
    assert code == 0
    capsys.readouterr()
    StandInApi.calls = []
    monkeypatch.setattr(wandb, "Api", StandInApi)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    code, _ = dashboard(sweep, "--save")
    out = capsys.readouterr().out
    assert code == 0
    views = [c for c in StandInApi.calls if c[0] == "graphql" and c[2]["type"] == "project-view"]
    reports = [c for c in StandInApi.calls if c[0] == "graphql" and c[2]["type"] == "runs"]
    assert [without_ids(json.loads(c[2]["spec"])) for c in views] == [without_ids(v["spec"]) for v in spec["workspaces"]]
    assert all(c[2]["entityName"] == "team" and c[2]["projectName"] == "peerlab" for c in views + reports)
    assert [c[2]["displayName"] for c in views] == [v["name"] for v in spec["workspaces"]]
    assert len(reports) == 1 and without_ids(json.loads(reports[0][2]["spec"])) == without_ids(spec["report"])
    assert ("projects", "team") in StandInApi.calls and ("create_project", "peerlab", "team") in StandInApi.calls
    urls = [line for line in out.splitlines() if line.startswith("https://")]
    assert len(urls) == 3 and all(u.startswith("https://wandb.example/team/peerlab") for u in urls)
    assert "/reports/" in urls[-1]


def test_save_offline_is_one_line_and_touches_nothing(sweep, capsys, monkeypatch):
    import wandb

    StandInApi.calls = []
    monkeypatch.setattr(wandb, "Api", StandInApi)
    code, _ = dashboard(sweep, "--save")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "offline" in err and StandInApi.calls == []


def md_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_the_analysis_run_holds_table1_the_optima_and_the_figures_and_a_rerun_updates_it(sweep, tmp_path, capsys):
    from peerlab.analysis.__main__ import main
    from peerlab.loggers import run_folders

    out = tmp_path / "analysis"
    assert main([str(sweep), "--out", str(out), "--wandb"]) == 0
    first = json.loads((out / "wandb_run.json").read_text())
    assert main([str(sweep), "--out", str(out), "--wandb"]) == 0  # a rerun: the same run, one step further
    printed = capsys.readouterr().out
    state = json.loads((out / "wandb_run.json").read_text())
    assert state["id"] == first["id"] and state["step"] == first["step"] + 1 == 1
    folders = run_folders(out, state["id"])
    assert len(folders) == 2 and len(list((out / "wandb").glob("offline-run-*"))) == 2
    assert f"wandb sync {folders[0]} {folders[1]}" in printed
    info = wandb_offline.run_info(folders[-1])
    assert info["job_type"] == "analysis" and info["group"] == "isoflop_tiny"
    (row,) = wandb_offline.history(folders[-1])
    assert row["_step"] == 1
    table = json.loads((folders[-1] / "files" / row["table1/path"]).read_text())
    expected = md_rows(out / "table1.md")
    assert len(table["data"]) == len(expected) == 4  # two methods at two budgets
    for got, want in zip(table["data"], expected, strict=True):  # the same rows; numbers as numbers
        assert [c if isinstance(c, str) else pytest.approx(c, rel=0, abs=0) for c in got] == [
            m if isinstance(c, str) else float(m) for c, m in zip(got, want, strict=True)]
    assert table["columns"] == [c.strip() for c in (out / "table1.md").read_text().splitlines()[0].strip("|").split("|")]
    pairwise = json.loads((folders[-1] / "files" / row["pairwise/path"]).read_text())
    assert len(pairwise["data"]) == len(md_rows(out / "pairwise.md")) == 2
    for figure in ("isoflop", "loss_vs_flops"):
        image = folders[-1] / "files" / row[f"{figure}/path"]
        assert image.read_bytes() == (out / f"{figure}.png").read_bytes()
    summary = wandb_offline.summary(folders[-1])
    for o in json.loads((out / "optima.json").read_text()):
        assert summary[f"optimum/{o['method']}/{sci(o['budget'])}/loss"] == o["loss"]
        assert summary[f"optimum/{o['method']}/{sci(o['budget'])}/size"] == o["size"]


def test_a_resumed_run_logs_no_step_twice_and_continues_w_and_b_s_row_index(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from peerlab.loggers import ResumedWandbLogger

    logged = []
    lg = ResumedWandbLogger(project="p", offline=True, save_dir=str(tmp_path), skip_through=4)
    lg._experiment = SimpleNamespace(log=lambda row, step=None: logged.append((step, row["trainer/global_step"])))
    for step in range(3, 8):
        lg.log_metrics({"train/loss": 1.0}, step=step)
    assert logged == [(5, 5), (6, 6), (7, 7)]  # W&B's _step is the trainer's: the earlier start's end + 1 onwards


def test_an_api_key_in_netrc_as_wandb_writes_it_is_found(tmp_path, monkeypatch):
    from wandb.sdk.lib.wbauth import write_netrc_auth

    from peerlab.loggers import wandb_has_api_key, wandb_host, wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com\n  login user\n  password " + "y" * 40 + "\n")
    assert not wandb_has_api_key() and wandb_mode("auto") == "offline"
    write_netrc_auth(host=wandb_host(), api_key="z" * 40)  # what `wandb login` of wandb 0.31 writes
    assert "api.wandb.ai" not in netrc.read_text()  # the host the old grep looked for
    assert wandb_has_api_key() and wandb_mode("auto") == "online"
    # a key stored by an older wandb (for api.wandb.ai) is one wandb 0.31 still uses: asked of wandb, so found
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    assert wandb_has_api_key()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a self-hosted server needs its own entry
    assert not wandb_has_api_key()
    write_netrc_auth(host="https://wandb.example.org", api_key="w" * 40)
    assert wandb_has_api_key()


def test_eval_adds_its_perplexities_to_the_checkpoints_own_run_after_its_last_step(sweep, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    record = next(r for r in results(sweep) if r["config"]["layer"]["name"] == "ffw")
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={record['checkpoints']['last']}",
                           "eval_sets=[embedded]", "max_tokens=2048", f"out_dir={tmp_path}", "wandb=true", "name=x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(record["wandb_dir"]).parents[1]
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and {f.name.rsplit("-", 1)[-1] for f in folders} == {wandb_offline.run_info(folders[0])["id"]}
    assert f"upload with: wandb sync {folders[0]} {folders[1]}" in proc.stdout
    trained = [row["_step"] for row in wandb_offline.history(folders[0])]
    (row,) = wandb_offline.history(folders[1])
    assert row["_step"] == max(trained) + 1 == record["steps"] + 1
    ppl = json.loads((tmp_path / "results.json").read_text())["x"]["embedded"]
    assert wandb_offline.summary(folders[1])["eval/embedded/ppl"] == ppl


def test_a_runs_folders_in_the_order_of_their_start_even_within_one_second(tmp_path):
    from peerlab.loggers import run_folders

    names = ["offline-run-20261204_010203-abc-1", "offline-run-20261204_010203-abc", "run-20261203_235959-abc",
             "offline-run-20261204_010203-abcd", "offline-run-20261204_010204-xyz"]
    for name in names:
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert [p.name for p in run_folders(tmp_path, "abc")] == [
        "run-20261203_235959-abc", "offline-run-20261204_010203-abc", "offline-run-20261204_010203-abc-1"]
