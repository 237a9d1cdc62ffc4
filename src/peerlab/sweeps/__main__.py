"""``python -m peerlab.sweeps status <sweep dir> [--watch SECONDS]``: where a SLURM sweep stands.

Reads the sweep's job list (written by ``hydra/launcher=slurm``), ``squeue`` and each point's results.json; prints
``12/32 done, 8 running, 12 pending (Priority)`` and one line per failed point with its log. Rerunning the sweep's
own command resubmits what is not done; completed points are skipped and interrupted ones resume.
"""

from __future__ import annotations

import argparse
import sys
import time

from peerlab.sweeps import status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peerlab.sweeps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="where each point of a SLURM sweep stands")
    st.add_argument("sweep_dir")
    st.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every SECONDS until all are done")
    args = parser.parse_args(argv)
    try:
        while True:
            found = status.points(args.sweep_dir)
            print(status.summary(found), flush=True)
            finished = all(p.state not in ("running", "pending") for p in found)
            if not args.watch or finished:
                return 0 if all(p.state == "done" for p in found) else 1
            time.sleep(args.watch)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
