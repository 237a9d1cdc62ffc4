"""PEER with 16 million experts (N = 4096^2) on this CPU: 2 processes, the tables split by columns over both
(``trainer=fsdp trainer.memory_parallel=2``), a small width (d_model 8) so that the tables (2 x 16.8M x 8 fp32,
1.07 GB, with their gradients and AdamW moments) and the full weights and optimizer state that rank 0 gathers into
the consolidated ``last.ckpt`` at the end fit two ranks in 24 GB (at d_model 16, rank 0 was killed for memory at
18 GB while consolidating). Measures each rank's peak resident memory
(sampled from /proc every 0.2 s), the step time, the loss curve and each rank's share of the tables.

    python experiments/sixteen_million.py > experiments/results/memory_parallel/sixteen_million.md
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["layer=peer", "layer.n_experts=16777216", "layer.d_key=32", "model=micro", "model.aspect_ratio=4", "model.head_dim=8",
        "trainer=fsdp", "trainer.memory_parallel=2", "trainer.accelerator=cpu", "trainer.devices=2", "budget=2e12",
        "logger=csv", "trainer.progress_bar=false", "trainer.val_every_steps=35", "run_name=sixteen_million"]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def main() -> None:
    out_dir = Path(tempfile.mkdtemp(prefix="sixteen-million-"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, f"out_dir={out_dir}"], cwd=out_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # peaks while training, and while the shards are consolidated into one last.ckpt file at the end (rank 0 then
    # holds the whole model and optimizer state), from the log line that starts it
    peaks = {(phase, rank): 0 for phase in ("training", "consolidation and final evaluation") for rank in (0, 1)}
    log_file = out_dir / "sixteen_million" / "train.log"
    phase = "training"
    while proc.poll() is None:
        if phase == "training" and log_file.is_file() and "consolidating the sharded" in log_file.read_text():
            phase = "consolidation and final evaluation"
        ranks = [proc.pid] + [c for c in children(proc.pid)
                              if "train.py" in Path(f"/proc/{c}/cmdline").read_text(errors="ignore")][:1]
        for rank, pid in enumerate(ranks):
            peaks[phase, rank] = max(peaks[phase, rank], rss_kib(pid))
        time.sleep(0.2)
    log = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"train.py failed ({proc.returncode}):\n{log[-3000:]}")
    run = out_dir / "sixteen_million"
    results = json.loads((run / "results.json").read_text())
    with open(run / "csv" / "metrics.csv") as fh:
        losses = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(fh) if r.get("train/loss")]
    n, d = 4096**2, 8
    table_gb = 2 * n * d * 4 / 1e9
    print("PEER, N = 4096^2 = 16,777,216 experts, d_model 8 (`model=micro model.aspect_ratio=4 model.head_dim=8`), "
          "2 CPU processes, "
          "`trainer=fsdp trainer.memory_parallel=2`, embedded corpus, budget 2e12 FLOPs "
          "(`python experiments/sixteen_million.py`):\n")
    print("| measure | value |\n|---|---|")
    print(f"| parameters (active) | {results['params_total']:,} ({results['params_active']:,}) |")
    print(f"| tables (down + up), whole | {table_gb:.2f} GB |")
    print(f"| tables per rank (half the columns of each) | {table_gb / 2:.2f} GB |")
    print(f"| planned peak per rank (`python -m peerlab.plan ... trainer.accelerator=cpu`) | "
          f"{results['memory_planned_gib']:.2f} GiB |")
    for (phase, rank), kib in peaks.items():
        print(f"| peak resident memory, rank {rank}, {phase} (sampled every 0.2 s) | {kib / 2**20:.2f} GiB |")
    print(f"| steps | {results['steps']} |")
    print(f"| step time (fit time / steps, validation included) | {results['fit_time_s'] / results['steps']:.2f} s |")
    print(f"| training tokens/s (both ranks) | {results['train_tokens_per_s']:.0f} |")
    first, last = losses[0], losses[-1]
    print(f"| training loss, step {first[0]} -> step {last[0]} | {first[1]:.3f} -> {last[1]:.3f} |")
    print(f"| final validation loss | {results['final_val_loss']:.4f} |")
    print(f"| memory_parallel recorded | {results['memory_parallel']} |")


if __name__ == "__main__":
    main()
