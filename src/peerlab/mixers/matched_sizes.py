"""Retrieval sizes that follow d_model, so that PEER and PKM keep the paper's cost structure at any width.

At the paper's width (d_model = 1024: N = 1024^2, h = 8, k = 16, d_key = 128) PEER's query projection and its two
sub-key scorings each cost 1/8 of the dense FFW it replaces and the experts 1/32 (0.28x in all), while its tables
hold 256x that FFW's parameters. Fixed sizes (``peer_small``: N = 128^2, h = 8, d_key = 64) break this at CPU
widths: sub-key scoring alone costs 131k FLOPs per token whatever d_model is, up to 38x the FFW at d_model 16.
The matched rule scales every size with d_model so that the proportions hold:

    h      = round(sqrt(d_model / 16))          8 at 1024; 2 at 48..96; 3 at 128..192
    k      = round(d_model / (8 h))             h*k ~ d_model / 8: experts cost ~1/32 of the FFW
    d_key  = 2 round(d_model / (2 h))           h*d_key ~ d_model: the query projection costs ~1/8
    sqrt N = max(d_model, ceil(sqrt(80 d_model / tables)))
                                                ~ d_model: sub-key scoring costs ~1/8; at least 10x the FFW's
                                                8 d_model^2 parameters in the tables (2 for PEER, 1 for PKM)

PKM takes twice PEER's k (the paper: 32 against 16). At d_model = 1024 the rule gives exactly the paper's PEER and
PKM. Memory+ (``memory_plus``) takes PKM's sizes with half the d_key: its gate's two d_model x d_model matrices
cost 1/4 of the FFW, and halving the query projection and sub-key scoring keeps the layer under 0.5x
(0.40-0.46x on the study grid). ``tests/test_matched_sizes.py`` checks, at every width of the study grid, that each layer's forward FLOPs are
at most 0.5x the FFW's and its parameters at least 10x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_PARAM_RATIO = 10  # sparse layer parameters / the replaced FFW's (8 d_model^2)


@dataclass(frozen=True)
class RetrievalSizes:
    n_keys: int  # N = n_sub^2
    heads: int
    k: int
    d_key: int


KINDS = ("peer", "pkm", "memory_plus")


def matched_sizes(d_model: int, kind: str = "peer", min_param_ratio: float = MIN_PARAM_RATIO) -> RetrievalSizes:
    """The rule above for ``kind`` ``peer`` (two tables), ``pkm`` (one table, twice the k) or ``memory_plus``
    (PKM's, half the d_key); ``min_param_ratio`` raises the tables' floor (``peer_matched_wide``: 32x)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: allowed: {', '.join(KINDS)}")
    tables = 2 if kind == "peer" else 1
    heads = max(1, round(math.sqrt(d_model / 16)))
    k = max(1, round(d_model / (8 * heads))) * (1 if kind == "peer" else 2)
    key_share = 4 if kind == "memory_plus" else 2  # heads * d_key ~ d_model / 2 for Memory+, d_model otherwise
    d_key = 2 * max(1, round(d_model / (key_share * heads)))
    n_sub = max(d_model, k, math.ceil(math.sqrt(min_param_ratio * 8 * d_model / tables)))
    return RetrievalSizes(n_sub * n_sub, heads, k, d_key)


def fill_sizes(d_model: int, kind: str, n_keys: int | None, heads: int | None, k: int | None,
               d_key: int | None, min_param_ratio: float = MIN_PARAM_RATIO) -> RetrievalSizes:
    """Explicit sizes win; ``None`` (``null`` in a layer config) takes the matched rule's value."""
    rule = matched_sizes(d_model, kind, min_param_ratio)
    return RetrievalSizes(rule.n_keys if n_keys is None else n_keys, rule.heads if heads is None else heads,
                          rule.k if k is None else k, rule.d_key if d_key is None else d_key)
