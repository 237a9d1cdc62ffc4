"""``python -m peerlab.plan``: the planner's command; the planner is :mod:`peerlab.parallel.plan`."""

import sys

from peerlab.parallel.plan import main

if __name__ == "__main__":
    sys.exit(main())
