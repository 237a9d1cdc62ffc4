"""``python -m peerlab.analysis ... --wandb``: the analysis as one W&B run beside the sweep's training runs.

The run has ``job_type: analysis`` and the sweep's group (the sweep folder's name, or ``logger.wandb.group`` if the
runs set one), so the dashboard's report (``peerlab.dashboard``) finds it. It holds every table the analysis wrote
(``table1``, ``pairwise``, ... as ``wandb.Table``s with the markdown's rows), every figure (``isoflop``,
``loss_vs_flops``) as an image, and the fitted optima in its summary (``optimum/<method>/<budget>/loss`` and
``/size``). Rerunning the analysis into the same ``--out`` updates that run: its id is kept in
``<out>/wandb_run.json``, with the step it logged last, so every rerun logs one step further and the summary holds
the latest fit. Offline (no API key) the run lands in ``<out>/wandb`` and the ``wandb sync`` line is printed.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from peerlab.config import ConfigError, sci

TABLE1 = "table1"  # the report's Table 1 panel reads this summary table
FIGURES = ("isoflop", "loss_vs_flops")  # the report's media panel shows these
STATE = "wandb_run.json"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def markdown_rows(text: str) -> tuple[list[str], list[list]]:
    """The header and rows of the first markdown table in ``text``. A column whose every cell is a plain number
    holds floats (sortable on W&B); any other column keeps the markdown's text."""
    block: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("|"):
            block.append(line.strip())
        elif block:
            break
    if len(block) < 2:
        raise ValueError("no markdown table")

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    header, rows = cells(block[0]), [cells(line) for line in block[2:]]
    numeric = [all(_NUMBER.match(row[i]) for row in rows) if rows else False for i in range(len(header))]
    return header, [[float(c) if numeric[i] else c for i, c in enumerate(row)] for row in rows]


def sweep_identity(runs) -> tuple[str, str, str | None]:
    """``(group, project, entity)`` of the analysed runs: their W&B group (the sweep folder's name unless
    ``logger.wandb.group`` was set; several sweeps join as ``a+b``), project and entity."""
    groups, projects, entities = set(), set(), set()
    for run in runs:
        wandb_cfg = run.results.get("config", {}).get("logger", {}).get("wandb", {})
        groups.add(wandb_cfg.get("group") or Path(run.path).parent.name)
        projects.add(wandb_cfg.get("project") or "peerlab")
        entities.add(wandb_cfg.get("entity"))
    if len(projects) > 1:
        raise ConfigError(f"--wandb: the runs went to several W&B projects ({', '.join(sorted(projects))}); analyse "
                          "one project's sweeps at a time")
    return "+".join(sorted(groups)), projects.pop(), (entities.pop() if len(entities) == 1 else None)


def log_analysis(out: Path, runs, opts, written: list[str]) -> dict:
    """Log the analysis written to ``out`` (the files in ``written``) to its W&B run; returns where it went."""
    import wandb

    from peerlab.loggers import run_folders, sync_command, wandb_mode, wandb_settings

    group, project, entity = sweep_identity(runs)
    state_file = out / STATE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    run_id = state.get("id") or uuid.uuid4().hex[:12]
    step = int(state.get("step", -1)) + 1
    mode = wandb_mode("auto")
    run = wandb.init(project=project, entity=entity, group=group, job_type="analysis", name=f"analysis {group}",
                     id=run_id, resume="allow", dir=str(out), mode=mode, settings=wandb_settings(mode),
                     config={"runs": len(runs), "sweeps": sorted({str(Path(r.path).parent) for r in runs})})
    try:
        _log(run, out, group, written, opts, step)
    except BaseException:
        run.finish(exit_code=1)
        raise
    folder = Path(run.dir).parent
    offline = run.offline
    url = None if offline else run.url
    run.finish()
    state_file.write_text(json.dumps({"id": run_id, "step": step, "group": group, "project": project}))
    folders = run_folders(out, run_id)
    return {"id": run_id, "group": group, "folder": str(folder), "url": url,
            "sync": sync_command(folders) if offline else None}


def _log(run, out: Path, group: str, written: list[str], opts, step: int) -> None:
    import wandb

    row = {}
    for name in written:
        path = out / name
        if name.endswith(".md"):
            try:
                columns, rows = markdown_rows(path.read_text())
            except ValueError:
                continue
            row[path.stem] = wandb.Table(columns=columns, data=rows)
        elif name.endswith(".png"):
            row[path.stem] = wandb.Image(str(path), caption=f"{path.stem} of {group}")
    run.log(row, step=step)
    for o in opts:
        key = f"optimum/{o.method}/{sci(o.budget)}"
        run.summary[f"{key}/loss"] = o.loss
        run.summary[f"{key}/size"] = o.size
        run.summary[f"{key}/bracketed"] = bool(o.interior)
