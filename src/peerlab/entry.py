"""One error path for the Hydra entry points (``train.py``, ``eval.py``, ``generate.py``): the command line is
checked before Hydra runs, and a mistake is one line, ``error: ...``, exit status 2.

Hydra's own messages for a bad override span a dozen lines (the search path, ``HYDRA_FULL_ERROR``), exit 1, and for a
misspelt key suggest ``+key=value``, which adds a key nothing reads. Here each override is parsed, a group option
must exist, every point of a sweep is composed exactly as Hydra will compose it (a value of the wrong type names
its key), and the composed config goes through the command's own checks (``validate``), unknown keys included.
Flags that print instead of run (``--help``, ``--cfg``, ``--info``...) are left to Hydra.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from peerlab.cli import EXIT_BAD_INPUT

# Hydra's flags that take a value, and those that make it print rather than run.
VALUED_FLAGS = {"-cd", "--config-dir", "-cn", "--config-name", "-cp", "--config-path", "-p", "--package",
                "--experimental-rerun", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}
PRINTING_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                  "--version", "--experimental-rerun"}


def split(argv: Sequence[str]) -> tuple[dict[str, str], list[str], bool]:
    """``(flags with their values, overrides, prints)``: Hydra's command line taken apart."""
    flags, overrides, prints = {}, [], False
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if arg.startswith("-"):
            prints |= name in PRINTING_FLAGS
            if name in VALUED_FLAGS and not eq:
                value = next(it, "")
                # --info/--cfg take an optional word: a following override is not theirs
                if name in ("--info", "-i", "--cfg", "-c") and ("=" in value or not value):
                    overrides += [value] if value else []
                    value = ""
            flags[name] = value
        else:
            overrides.append(arg)
    return flags, overrides, prints


def _one_line(exc: BaseException) -> str:
    """The user-facing line of a Hydra or OmegaConf error: the key and what was wrong with its value."""
    cause = exc
    while cause.__cause__ is not None and not getattr(cause, "full_key", None):
        cause = cause.__cause__
    key = getattr(cause, "full_key", None)
    msg = getattr(cause, "msg", None) or str(cause)
    first = next((line.strip() for line in str(msg).splitlines() if line.strip()), type(cause).__name__)
    return f"{key}: {first}" if key else first


def preflight(argv: Sequence[str], command: str, config_dir: Path, config_name: str,
              check: Callable | None = None, sweeps: bool = True, closed: bool = False) -> str | None:
    """An error line for the first mistake in ``argv``, else None. ``check(cfg)`` raises a user error for a bad
    composed config; ``sweeps``: comma lists are sweeps (train.py -m), every point composed; ``closed``: the config
    file lists every key the command reads (eval.py, generate.py), so a key it lacks is refused, with ``+`` too."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from peerlab.errors import USER_ERRORS
    from peerlab.overrides import check_group_overrides
    from peerlab.sweeps.expand import CONFIGS, compose_point, grid

    flags, overrides, prints = split(argv)
    if prints:
        return None
    problem = check_group_overrides(overrides, CONFIGS)
    if problem:
        return problem
    parser = OverridesParser.create()
    multirun = "-m" in flags or "--multirun" in flags
    for arg in overrides:
        try:
            (parsed,) = parser.parse_overrides([arg])
        except HydraException as exc:
            reason = str(exc).strip().splitlines()[0]
            return f"{arg}: cannot be read as key=value ({reason}); quote values with spaces or brackets"
        if parsed.is_sweep_override() and sweeps and not multirun:
            return f"{arg}: a sweep of values; add -m to run one job per value (or [a,b] for a list value)"
    folder = Path(flags.get("-cd") or flags.get("--config-dir") or config_dir).expanduser()
    name = flags.get("-cn") or flags.get("--config-name") or config_name
    if not (folder / f"{name}.yaml").is_file():
        return f"-cn {name}: no {name}.yaml in {folder}"
    if closed:
        problem = _unknown_key_line(overrides, command, folder, name, with_added=True)
        if problem:
            return problem
    try:
        points = grid(folder, name, overrides) if sweeps and multirun else [list(overrides)]
        for point in points:
            cfg = compose_point(folder, name, point)
            if check is not None:
                check(cfg)
    except USER_ERRORS as exc:
        return str(exc)
    except (HydraException, OmegaConfBaseException) as exc:
        return _unknown_key_line(overrides, command, folder, name) or _one_line(exc)
    return None


def _unknown_key_line(overrides: list[str], command: str, folder: Path, name: str,
                      with_added: bool = False) -> str | None:
    """``key=value: not a key of <command>; allowed: ...`` for the first override whose key does not exist. A key
    that ``+`` adds is left to the command's own check of the composed config unless ``with_added``."""
    from omegaconf import OmegaConf

    from peerlab.overrides import check_known_keys
    from peerlab.sweeps.expand import compose_point

    base = OmegaConf.to_container(compose_point(folder, name, []), resolve=False)
    checked = overrides if with_added else [o for o in overrides if not o.startswith("+")]
    return check_known_keys(checked, base, command)


def quote_paths(argv: Sequence[str]) -> list[str]:
    """``key=<path>`` quoted for Hydra when the path exists but Hydra's grammar cannot read it bare: a sweep
    point's folder is named by its overrides (``.../budget=6e9,layer=ffw/checkpoints/last.ckpt``), and Hydra reads
    its ``=`` and ``,`` as syntax. What the user meant is unambiguous: the file is there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, out = OverridesParser.create(), []
    for arg in argv:
        key, eq, value = arg.partition("=")
        # and text beyond ASCII (a prompt in French or Chinese), which Hydra's grammar reads only when quoted
        if eq and not arg.startswith("-") and "'" not in value and value and (_exists(value) or not value.isascii()):
            try:
                parser.parse_overrides([arg])
            except HydraException:
                arg = f"{key}='{value}'"
        out.append(arg)
    return out


def _exists(value: str) -> bool:
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):  # a value too long to be a path (ENAMETOOLONG), or holding a NUL: not a path
        return False


def run_checked(main: Callable[[], object], argv: Sequence[str], command: str, config_dir: Path, config_name: str,
                check: Callable | None = None, sweeps: bool = True, closed: bool = False) -> None:
    """Check ``argv`` (:func:`preflight`), then hand over to Hydra's ``main`` (which reads ``sys.argv``)."""
    argv = quote_paths(argv)
    sys.argv[1:] = argv
    problem = preflight(argv, command, config_dir, config_name, check, sweeps, closed)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    main()
