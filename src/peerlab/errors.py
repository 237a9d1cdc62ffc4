"""The exceptions that mean "bad input from the user": printed as one line, never as a traceback."""

from peerlab.config import ConfigError
from peerlab.data.corpora import CorpusError
from peerlab.data.tokenizer import TokenizerError
from peerlab.flops import BudgetTooSmall
from peerlab.mixers.base import MixerConfigError

USER_ERRORS = (ConfigError, CorpusError, TokenizerError, BudgetTooSmall, MixerConfigError)
