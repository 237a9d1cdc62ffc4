"""``python -m peerlab.sweeps status <sweep dir> [--watch SECONDS]``: where a sweep stands, whatever ran it.

For ``hydra/launcher=slurm`` it reads the sweep's job list, ``squeue`` and each point's results.json and prints
``12/32 done, 8 running, 12 pending (Priority)``; for a local launcher (Hydra's basic, joblib) it reads the grid from
``multirun.yaml`` and prints ``3/4 done, 1 started``. One line per failed point with its log. Rerunning the sweep's
own command runs what is not done: completed points are skipped and interrupted ones resume. Before launching,
``python -m peerlab.plan -cd DIR -cn SWEEP`` lists the points, their steps, tokens, FLOPs and memory.
"""

from __future__ import annotations

import sys
import time

from peerlab.sweeps import status


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m peerlab.sweeps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="where each point of a SLURM sweep stands")
    st.add_argument("sweep_dir")
    st.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every SECONDS until all are done")
    args = parser.parse_args(argv)
    if args.watch < 0:
        parser.error(f"--watch={args.watch:g}: must be >= 0 seconds (0: print once)")
    try:
        while True:
            found = status.sweep_points(args.sweep_dir)
            print(status.summary(found), flush=True)
            finished = all(p.state not in ("running", "pending", "started") for p in found)
            if not args.watch or finished:
                return 0 if all(p.state == "done" for p in found) else 1
            time.sleep(args.watch)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
