"""``make demo`` (``python -m peerlab.demo``): the claim in under two minutes on two CPU cores.

Dense and PEER (``peer_matched``) at the same FLOP budget, in the model size where the matched study
(experiments/README.md) found both compute-optimal, trained side by side: one Hydra multirun of two points on the
joblib launcher, one process and one thread each. Prints both final validation losses and their difference, draws
validation loss against training FLOPs, and prints the figure's path. Rerunning reuses the finished runs of the same
budget and model; another budget or model trains its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peerlab.analysis.figures import draw_curves
from peerlab.config import sci

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"ffw": "dense", "peer_matched": "PEER"}
PROGRESS_S = 15  # seconds between progress lines


def _point(sweep: Path, layer: str, model: str, budget: float) -> Path:
    """A point's folder: one per layer, model and budget, so a demo at another budget trains anew."""
    return sweep / f"{layer}-{model}-{sci(budget)}"


def _steps(run_dir: Path) -> tuple[int, float | None]:
    """Steps done at the last logged row and its training loss, from the run's metrics.csv (read while it trains)."""
    try:
        lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    except OSError:
        return 0, None
    if len(lines) < 2:
        return 0, None
    header = lines[0].split(",")
    rows = [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:]]
    losses = [r for r in rows if r.get("train/loss") and r.get("step")]
    if not losses:
        return 0, None
    return int(float(losses[-1]["step"])) + 1, float(losses[-1]["train/loss"])  # the step column counts from 0


def _first_error(log_path: Path) -> str | None:
    """The reason a point failed, as train.py logged it (``error: ...``), from this demo's part of the log."""
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith("demo: ")]
    for line in lines[starts[-1] if starts else 0:]:
        if "error: " in line:
            return line.split("error: ", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser, output_folder

    parser = ArgumentParser(prog="python -m peerlab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1e12, help="training FLOPs of each run (default 1e12)")
    parser.add_argument("--model", default="s2", help="model size, a configs/model option (default s2)")
    parser.add_argument("--out", type=output_folder, default=Path("runs/demo"), help="where the runs and figure go")
    args = parser.parse_args(argv)
    from peerlab.cli import fail

    if not (args.budget > 0 and args.budget < float("inf")):
        fail(f"--budget={args.budget:g}: must be a positive number of FLOPs, e.g. 1e12")
    models = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
    if args.model not in models:
        fail(f"--model={args.model}: not a configs/model option; allowed: {', '.join(models)}")
    sweep = args.out.resolve()
    sweep.mkdir(parents=True, exist_ok=True)
    log_path = sweep / "demo.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core each: the two runs side by side on two
    common = ["-cd", str(ROOT / "experiments"), "-cn", "isoflop_cpu_matched", "logger=csv"]
    print(f"demo: dense and PEER at {sci(args.budget)} FLOPs each, model {args.model}, side by side; log: {log_path}",
          flush=True)
    with open(log_path, "a") as log:
        log.write(f"demo: {' '.join(argv or sys.argv[1:])}\n")
        log.flush()
        prepared = subprocess.run([sys.executable, "-m", "peerlab.prepare", "data.sources=[wikipedia,lee,kjv]",
                                   "tokenizer.vocab_size=512"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if prepared.returncode != 0:
            print(f"error: preparing the corpus failed; see {log_path}", file=sys.stderr)
            return 1
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "-m", *common, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             f"hydra.sweeper.params.budget={args.budget:g}", f"hydra.sweeper.params.model={args.model}",
             f"hydra.sweeper.params.layer='{','.join(LAYERS)}'", f"hydra.sweep.dir={sweep}",
             "hydra.sweep.subdir='${layer.name}-${model.name}-${sci:${budget}}'"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        next_line = time.monotonic() + PROGRESS_S
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() < next_line:
                continue
            next_line += PROGRESS_S
            parts = []
            for layer, name in LAYERS.items():
                steps, loss = _steps(_point(sweep, layer, args.model, args.budget))
                parts.append(f"{name} {steps} steps" + (f", loss {loss:.3f}" if loss is not None else ""))
            print(f"  {' | '.join(parts)}", flush=True)
    results = {}
    for layer in LAYERS:
        try:
            results[layer] = json.loads((_point(sweep, layer, args.model, args.budget) / "results.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
    if proc.returncode != 0 or any(r.get("status") != "completed" for r in results.values()) or len(results) < len(LAYERS):
        print(f"error: {_first_error(log_path) or 'training failed'} (the whole log: {log_path})", file=sys.stderr)
        return 2 if _first_error(log_path) else 1
    for layer, name in LAYERS.items():
        r = results[layer]
        print(f"{name:>6} ({layer}, {args.model}): final val loss {r['final_val_loss']:.4f} (ppl {r['final_val_ppl']:.2f}) "
              f"after {r['steps']} steps, {r['tokens'] / 1e6:.2f}M tokens, {r['flops']:.3g} FLOPs, "
              f"{r['params_total'] / 1e3:.0f}k params ({r['params_active'] / 1e3:.0f}k active)")
    diff = results["peer_matched"]["final_val_loss"] - results["ffw"]["final_val_loss"]
    print(f"PEER - dense: {diff:+.4f} nats at equal FLOPs (one seed each; seed-to-seed spread and the full grid: "
          "experiments/README.md)")
    figure = sweep / f"loss_vs_flops-{args.model}-{sci(args.budget)}.png"  # one per budget and model, as the runs
    draw_curves([(f"{name} ({layer})", layer, _point(sweep, layer, args.model, args.budget))
                 for layer, name in LAYERS.items()], figure,
                title=f"Dense vs PEER at {sci(args.budget)} FLOPs each, model {args.model} (one seed each)")
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
