"""The paper's views of a sweep as W&B workspaces and a report, built as code:
``python -m peerlab.dashboard <sweep dir | -cd DIR -cn SWEEP> --entity E [--project P] [--save] [--out F]
[--preview]``.

Per budget of the sweep, one saved workspace view of the sweep's runs (W&B group = the sweep folder's name) at that
budget, with sections for
- loss against cumulative FLOPs (log x), training loss and periodic validation, the runs grouped by layer and then
  model size (the seeds of one point average into one curve);
- the isoFLOP scatter: final validation loss against the dense backbone's parameters (log x), the paper's axes;
- expert usage and unevenness against FLOPs (the paper's Table 2 quantities), for the layers that route;
- throughput and budget spent;
and a run table (layer, model, budget, parameters, final loss, status). And one report: Table 1 and the isoFLOP
figure that ``python -m peerlab.analysis ... --wandb`` logs to the sweep's analysis run, then a panel grid per budget.

Without ``--save`` nothing touches the network: the specs (what ``save()`` uploads) are written as JSON to ``--out``,
and ``--preview`` draws each view from its spec and the runs' offline files (``peerlab.dashboard_preview``).
Every metric, summary and config key a panel names is first checked against the sweep's own runs, read offline from
their ``.wandb`` files (``peerlab.wandb_offline``); a spec naming a key no run has is refused. ``--save`` uploads the
views and the report and prints their URLs; without an API key or in offline mode it says so in one line. Needs the
``dashboard`` extra (``pip install -e '.[dashboard]'``: ``wandb-workspaces``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from peerlab.config import ConfigError, sci

LOSS = ("train/loss", "val/loss")
THROUGHPUT = ("tok/s", "budget%")
X = "flops"
SIZE = "params_dense_backbone"  # summary: the isoFLOP x-axis
FINAL = "final/val/loss"  # summary: the final validation on the whole split
GROUPS = ("layer.name", "model.name")  # a curve per layer and size; a point's seeds average into it
TABLE_COLUMNS = ("config:layer.name", "config:model.name", "config:budget", "summary:params_total",
                 "summary:params_active", "summary:params_dense_backbone", "summary:final/val/loss",
                 "summary:status")
W_AND_B_OWN = {"_step", "_runtime", "_timestamp", "_absolute_runtime"}  # every run has them; never logged by us


@dataclass
class SweepKeys:
    """What the sweep's runs recorded, read offline from their .wandb files."""

    group: str
    project: str
    budgets: list[float]
    history: set[str] = field(default_factory=set)
    summary: set[str] = field(default_factory=set)
    config: set[str] = field(default_factory=set)
    runs: int = 0


def _dotted(node, prefix: str = "") -> set[str]:
    """``{"layer": {"name": ..}}`` -> ``{"layer", "layer.name"}``: config keys as W&B's filters and columns name them."""
    if isinstance(node, dict) and node:
        out = {prefix.rstrip(".")} if prefix else set()
        for key, value in node.items():
            out |= _dotted(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip(".")}


def sweep_keys(sweep_dir: Path) -> SweepKeys:
    """The keys the sweep's runs logged, summarised and configured, from their W&B folders (offline files)."""
    from peerlab import wandb_offline

    results = sorted(Path(sweep_dir).glob("*/results.json"))
    if not results:
        raise ConfigError(f"{sweep_dir}: no point of a sweep here (no */results.json)")
    found = None
    for path in results:
        record = json.loads(path.read_text())
        if found is None:
            wandb_cfg = record.get("config", {}).get("logger", {}).get("wandb", {})
            found = SweepKeys(group=wandb_cfg.get("group") or Path(sweep_dir).name, budgets=[],
                              project=wandb_cfg.get("project") or "peerlab")
        found.budgets.append(float(record["budget"]))
        for folder in record.get("wandb_dirs") or ([record["wandb_dir"]] if record.get("wandb_dir") else []):
            try:
                rows = wandb_offline.history(folder)
                summary, config = wandb_offline.summary(folder), wandb_offline.config(folder)
            except (OSError, ValueError):
                continue
            found.runs += 1
            for row in rows:
                found.history |= set(row)
            found.summary |= set(summary)
            found.config |= _dotted(config)
    if found.runs == 0:
        raise ConfigError(f"{sweep_dir}: its runs have no W&B folders (trained with logger=csv or W&B disabled?)")
    found.budgets = sorted(set(found.budgets))
    return found


def panels(keys: SweepKeys) -> dict[str, list]:
    """Section name -> panels. Usage panels only when a layer of the sweep routes (PKM, PEER, MoE log them)."""
    import wandb_workspaces.reports.v2 as wr

    def against_flops(key: str):
        return wr.LinePlot(title=f"{key} against training FLOPs", x=X, y=[key], log_x=True,
                           title_x="training FLOPs", title_y=key)

    usage = sorted(k for k in keys.history if k.startswith("val/") and k.endswith(("expert_usage", "unevenness")))
    sections = {
        "Loss against FLOPs": [against_flops(k) for k in LOSS],
        "isoFLOP": [wr.ScatterPlot(title="final validation loss against model size (dense-backbone parameters)",
                                   x=wr.SummaryMetric(SIZE), y=wr.SummaryMetric(FINAL), log_x=True)],
    }
    if usage:
        sections["Expert usage (Table 2)"] = [against_flops(k) for k in usage]
    sections["Throughput and budget"] = [against_flops(k) for k in THROUGHPUT]
    return sections


def _column(name: str) -> str:
    """A run-table column as W&B's spec names it: ``config:layer.name`` -> ``config:layer.value.name``."""
    if not name.startswith("config:"):
        return name
    head, *rest = name.removeprefix("config:").split(".")
    return "config:" + ".".join([head, "value", *rest])


def _config_key(name: str) -> str:
    """The inverse: ``layer.value.name`` -> ``layer.name``."""
    head, _, rest = name.partition(".value")
    return head + rest


def spec_keys(spec) -> set[tuple[str, str]]:
    """``(kind, key)`` of every run key a saved spec names, read from the JSON that ``save()`` uploads: history
    metrics of line plots and the x-axis, ``summary:``/``config:`` axes and columns, config grouping and filters.
    W&B's own keys (``_step``) and run attributes (``run:``, group, job type) are not the runs' keys."""
    found: set[tuple[str, str]] = set()

    def name(value: str, unprefixed: str) -> None:
        if value.startswith("summary:"):
            found.add(("summary", value.removeprefix("summary:")))
        elif value.startswith("config:"):
            found.add(("config", _config_key(value.removeprefix("config:"))))
        elif not value.startswith("run:") and value not in W_AND_B_OWN:
            found.add((unprefixed, _config_key(value) if unprefixed == "config" else value))

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if isinstance(node.get("section"), str) and isinstance(node.get("name"), str):  # a filter's or grouping's key
            if node["section"] in ("config", "summary"):
                name(f"{node['section']}:{node['name']}", "config")
        for key, value in node.items():
            if key in ("xAxis", "yAxis", "zAxis") and isinstance(value, str):
                name(value, "history")
            elif key == "metrics" and isinstance(value, list):
                for metric in value:
                    name(metric, "history")
            elif key == "groupBy" and isinstance(value, str) and value:
                name(value, "config")
            elif key in ("columnPinned", "columnVisible") and isinstance(value, dict):
                for column in value:
                    name(column, "column")  # an unprefixed column names no run key: refused below
            else:
                walk(value)

    walk(spec)
    return found


def check_keys(needed: set[tuple[str, str]], keys: SweepKeys) -> None:
    """Refuse a spec that names a key none of the sweep's runs has (a panel or column that would stay empty)."""
    have = {"history": keys.history, "summary": keys.summary, "config": keys.config}
    missing = sorted(f"{kind} {key!r}" for kind, key in needed if key not in have.get(kind, ()))
    if missing:
        raise ConfigError(f"dashboard: no run of sweep {keys.group!r} has {', '.join(missing)}: a panel would stay "
                          "empty (were the runs trained with an older peerlab? python -m peerlab.sweeps status shows "
                          "them)")


def _train_runs(group: str, budget: float | None):
    import wandb_workspaces.workspaces as ws

    filters = [ws.Metric("Group") == group, ws.Metric("JobType") == "train"]
    return filters + ([ws.Config("budget") == budget] if budget is not None else [])


def workspaces(keys: SweepKeys, entity: str, project: str) -> list:
    """One saved view per budget: the sweep's training runs at that budget, every section, the run table."""
    import wandb_workspaces.workspaces as ws

    return [ws.Workspace(
        entity=entity, project=project, name=f"{keys.group} at {sci(budget)} FLOPs",
        sections=[ws.Section(name=name, panels=items, is_open=True) for name, items in panels(keys).items()],
        runset_settings=ws.RunsetSettings(filters=_train_runs(keys.group, budget),
                                          groupby=[ws.Config(g) for g in GROUPS],
                                          pinned_columns=[_column(c) for c in TABLE_COLUMNS]),
        settings=ws.WorkspaceSettings(x_axis=X, smoothing_type="none"),
    ) for budget in keys.budgets]


def report(keys: SweepKeys, entity: str, project: str):
    """Table 1 and the isoFLOP figure from the sweep's analysis run, then a panel grid per budget."""
    import wandb_workspaces.reports.v2 as wr

    from peerlab.analysis.wandb_run import FIGURES, TABLE1

    analysis = wr.Runset(name="analysis", filters=f"Metric('Group') = '{keys.group}' and Metric('JobType') = 'analysis'")
    blocks = [
        wr.H1(text=f"{keys.group}: isoFLOP comparison"),
        wr.P(text="Table 1 (the compute-optimal loss per method and budget) and the isoFLOP curves, as "
                  "python -m peerlab.analysis fitted them; then, per budget, loss against training FLOPs and final "
                  "loss against model size (the dense backbone's parameters)."),
        wr.PanelGrid(runsets=[analysis], panels=[wr.WeavePanelSummaryTable(table_name=TABLE1),
                                                 wr.MediaBrowser(media_keys=list(FIGURES), num_columns=1)]),
    ]
    for budget in keys.budgets:  # fresh panels per grid: a panel's id is its own
        grid = [p for name, items in panels(keys).items() if name != "Throughput and budget" for p in items]
        runset = wr.Runset(name=f"{sci(budget)} FLOPs", groupby=list(GROUPS),
                           filters=f"Metric('Group') = '{keys.group}' and Metric('JobType') = 'train' and "
                                   f"Config('budget') = {budget!r}")
        blocks += [wr.H2(text=f"{sci(budget)} FLOPs"), wr.PanelGrid(runsets=[runset], panels=grid)]
    return wr.Report(entity=entity, project=project, title=f"{keys.group}: the paper's panels", blocks=blocks,
                     description=f"Built by python -m peerlab.dashboard from sweep {keys.group}")


def _spec(obj) -> dict:
    return json.loads(obj._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))


def specs(views: list, rep) -> dict:
    """What ``save()`` uploads, as JSON: each view's spec and the report's."""
    return {"workspaces": [{"name": v.name, "spec": _spec(v)} for v in views], "report": _spec(rep)}


def build(keys: SweepKeys, entity: str, project: str) -> tuple[list, object, dict]:
    """The views, the report and their specs, refused if a spec names a key that no run of the sweep has. The
    report's analysis panels name the analysis run's keys (``peerlab.analysis.wandb_run``), not the runs'."""
    views, rep = workspaces(keys, entity, project), report(keys, entity, project)
    out = specs(views, rep)
    needed = set().union(*(spec_keys(v["spec"]) for v in out["workspaces"]))
    needed |= spec_keys(out["report"])
    check_keys(needed, keys)
    return views, rep, out


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser, fail, output_file

    ap = ArgumentParser(prog="python -m peerlab.dashboard", description=__doc__.splitlines()[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("sweep_dir", nargs="?", type=Path, help="the sweep's folder (its points' parent)")
    ap.add_argument("-cd", "--config-dir", type=Path, help="with -cn: the sweep file's folder, as train.py takes it")
    ap.add_argument("-cn", "--config-name", help="the sweep file; its hydra.sweep.dir is the sweep's folder")
    ap.add_argument("--entity", required=True, help="the W&B entity (user or team) the runs went to")
    ap.add_argument("--project", help="the W&B project (default: the runs' logger.wandb.project)")
    ap.add_argument("--save", action="store_true", help="upload the views and the report (needs an API key)")
    ap.add_argument("--out", type=output_file, help="where the specs go (default <sweep dir>/dashboard.json)")
    ap.add_argument("--preview", action="store_true", help="also draw each view from its spec and the runs' offline "
                                                           "files: <out stem>-<budget>.png beside the specs")
    args = ap.parse_args(argv)
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        fail("python -m peerlab.dashboard needs wandb-workspaces: pip install -e '.[dashboard]'")
    sweep_dir = args.sweep_dir
    if args.config_name:
        from peerlab.sweeps.expand import CONFIGS, compose_point

        folder = args.config_dir or CONFIGS
        if not (folder / f"{args.config_name}.yaml").is_file():
            fail(f"-cn {args.config_name}: no {args.config_name}.yaml in {folder} (a sweep file's folder goes in -cd)")
        cfg = compose_point(folder, args.config_name, [], hydra=True)
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
    if sweep_dir is None:
        fail("give the sweep's folder, or -cd DIR -cn SWEEP")
    if not Path(sweep_dir).is_dir():
        fail(f"{sweep_dir}: no such folder (has the sweep run on this machine?)")
    try:
        keys = sweep_keys(Path(sweep_dir))
        project = args.project or keys.project
        views, rep, spec = build(keys, args.entity, project)
    except ConfigError as exc:
        fail(str(exc))
    out = args.out or Path(sweep_dir) / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=1))
    if args.preview:
        from peerlab.dashboard_preview import draw, load_runs

        runs = load_runs(Path(sweep_dir))
        for view, budget in zip(spec["workspaces"], keys.budgets, strict=True):
            png = out.with_name(f"{out.stem}-{sci(budget)}.png")
            draw(view, runs, png)
            print(f"drew {png}")
    print(f"wrote {out}: {len(views)} workspace view(s) (one per budget) and a report for sweep {keys.group} "
          f"({keys.runs} runs)" + ("" if args.save else "; --save uploads them"))
    if not args.save:
        return 0
    from peerlab.loggers import wandb_has_api_key, wandb_mode

    if wandb_mode("auto") != "online" or not wandb_has_api_key():
        fail("--save: W&B is offline here (no API key, or WANDB_MODE=offline); wandb login, or omit --save to write "
             "the specs")
    try:
        urls = [v.save().url for v in views]
        rep.save()
        urls.append(rep.url)
    except Exception as exc:  # noqa: BLE001 - the server's own errors, one line each
        fail(f"--save: W&B refused the dashboard ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})")
    for url in urls:
        print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
