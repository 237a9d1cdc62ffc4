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
