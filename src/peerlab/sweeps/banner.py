"""A multirun says where its points go before the first one runs, whichever launcher runs them
(``hydra.callbacks.sweep_banner`` in ``configs/train.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class SweepBanner(Callback):
    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        print(f"sweep: {sweep_dir} (where it stands: python -m peerlab.sweeps status {sweep_dir})", flush=True)
