"""The exceptions that mean "bad input from the user": printed as one line, never as a traceback."""

from peerlab.config import ConfigError
from peerlab.data.corpora import CorpusError
from peerlab.data.tokenizer import TokenizerError
from peerlab.flops import BudgetTooSmall
from peerlab.mixers.base import MixerConfigError

USER_ERRORS = (ConfigError, CorpusError, TokenizerError, BudgetTooSmall, MixerConfigError)


def missing_extra(extra: str, package: str) -> ConfigError:
    """The one-line error for an optional dependency that is not installed."""
    return ConfigError(f"{package} is not installed; it comes with peerlab's {extra!r} extra: "
                       f"pip install -e '.[{extra}]' (or pip install 'peerlab[{extra}]')")
