"""The one rule of every command-line entry point: a user's mistake is one line, ``error: <what>``, exit status 2.

argparse's own errors (an unknown option, a value of the wrong type) print a usage block before theirs; this parser
prints the line alone and points at ``--help`` for the usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")



def _output(file: bool):
    """An argparse ``type`` for an output folder (``file``: an output file): refused in one line when it cannot be
    written (:func:`peerlab.config.output_problem`)."""
    from pathlib import Path

    def checked(value: str) -> Path:
        from peerlab.config import output_problem

        problem = output_problem(value, file=file)
        if problem:
            raise argparse.ArgumentTypeError(f"{value!r} {problem}")
        return Path(value).expanduser()

    return checked


output_folder = _output(file=False)
output_file = _output(file=True)


def key_values(argv: list[str], allowed: dict[str, str], required: tuple[str, ...], prog: str,
               about: str = "") -> dict[str, str]:
    """``key=value`` arguments (as train.py's): ``allowed`` maps each key to its help; a stray, repeated or missing
    key is refused in one line. ``--help`` prints the keys."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {prog} " + " ".join(f"{k}=..." for k in allowed) + "\n" + (f"\n{about}\n" if about else ""))
        print("\n".join(f"  {k:<14} {text}" for k, text in allowed.items()))
        sys.exit(0)
    out: dict[str, str] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            fail(f"{arg!r}: arguments are key=value; keys: {', '.join(allowed)} (see {prog} --help)")
        if key not in allowed:
            fail(f"{key}: not a key of {prog}; allowed: {', '.join(allowed)}")
        if key in out:
            fail(f"{key}: given twice")
        out[key] = value
    for key in required:
        if not out.get(key):
            fail(f"{key}: required ({allowed[key]})")
    return out
