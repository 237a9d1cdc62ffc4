"""Check ``group=option`` command-line overrides before Hydra composes, so a typo costs one clear line.

Hydra's own message for an unknown option spans a dozen lines (the config search path included); this catches
the common forms (``layer=peer``, ``model=d4,d6`` sweeps, ``+group=x``) and leaves the rest to Hydra.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

SIMPLE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")


def group_options(config_dir: Path, group: str) -> list[str]:
    """The group's options: our yaml files, and for Hydra's own groups (``hydra/launcher``...) also those its plugins
    register (``joblib``, ``submitit_slurm``, ``basic``...)."""
    options = {p.stem for p in (config_dir / group).glob("*.yaml")}
    if group.startswith("hydra/"):
        from hydra.core.config_store import ConfigStore
        from hydra.core.plugins import Plugins

        Plugins.instance()  # discovering the plugins registers their configs
        node = ConfigStore.instance().repo
        for part in group.split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        options |= {name.removesuffix(".yaml") for name in node if isinstance(name, str) and name.endswith(".yaml")}
    return sorted(options)


def check_group_overrides(argv: Sequence[str], config_dir: Path) -> str | None:
    """An error line for the first override naming a missing option of a config group, else ``None``."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if "." in key or not (config_dir / key).is_dir() or not SIMPLE_VALUE.match(value):
            continue
        allowed = group_options(config_dir, key)
        for option in value.split(","):
            if option not in allowed:
                return f"{key}={option!r} is not an option of config group '{key}'; allowed: {', '.join(allowed)}"
    return None


def check_known_keys(argv: Sequence[str], config: dict, command: str) -> str | None:
    """An error line for the first ``key=value`` override whose key is not in ``config`` (a plain dict of the
    primary config), listing the keys allowed at that level; ``hydra.*`` and flags are left to Hydra."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key == "hydra" or key.startswith("hydra."):
            continue
        node, path = config, []
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                where = f" under {'.'.join(path)}" if path else ""
                allowed = ", ".join(sorted(k for k in node if k not in ("defaults", "hydra"))) if isinstance(node, dict) else "none"
                return f"{key}={value}: unknown key of {command}; allowed{where}: {allowed}"
            node, path = node[part], [*path, part]
    return None
