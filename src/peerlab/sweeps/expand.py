"""The points of a sweep as Hydra's basic sweeper makes them, without launching anything.

A sweep file's ``hydra.sweeper.params`` come first, then the command line's overrides: a key given on both takes the
command line's values (``model=d12`` or ``model=d12,d16``), and every comma list or ``range()`` is a dimension of
the grid. Each point is the list of overrides that ``train.py -m`` would run it with; :func:`compose_point` composes
it exactly as ``train.py -cd DIR -cn NAME <overrides>`` would.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from peerlab.config import CONFIGS


def _overrides(config_dir: Path, overrides: list[str]) -> list[str]:
    """The command line's overrides, plus the search path that lets a sweep file in another folder find ``train``."""
    extra = [] if config_dir.resolve() == CONFIGS.resolve() else [f"hydra.searchpath=[file://{CONFIGS}]"]
    return [*overrides, *extra]


def compose_point(config_dir: Path, config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """The config ``train.py -cd config_dir -cn config_name *overrides`` runs (``hydra``: with its ``hydra`` node)."""
    from hydra import compose, initialize_config_dir

    from peerlab.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(config_name, overrides=_overrides(Path(config_dir), overrides), return_hydra_config=hydra)


def grid(config_dir: Path, config_name: str, overrides: list[str]) -> list[list[str]]:
    """Every point's overrides, in the sweeper's order (the sweep file's keys, then the command line's)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line is not None]
    base = compose_point(config_dir, config_name, plain, hydra=True)
    params = base.hydra.sweeper.get("params") or {}
    swept = [f"{key}={value}" for key, value in params.items()]
    return BasicSweeper.split_arguments(parser.parse_overrides([*swept, *overrides]), None)[0]
