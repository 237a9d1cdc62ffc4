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
PKM. ``tests/test_matched_sizes.py`` checks, at every width of the study grid, that each layer's forward FLOPs are
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


def matched_sizes(d_model: int, kind: str = "peer") -> RetrievalSizes:
    """The rule above for ``kind`` ``peer`` (two tables) or ``pkm`` (one table, twice the k)."""
    if kind not in ("peer", "pkm"):
        raise ValueError(f"kind={kind!r}: allowed: peer, pkm")
    tables = 2 if kind == "peer" else 1
    heads = max(1, round(math.sqrt(d_model / 16)))
    k = max(1, round(d_model / (8 * heads))) * (1 if kind == "peer" else 2)
    d_key = 2 * max(1, round(d_model / (2 * heads)))
    n_sub = max(d_model, k, math.ceil(math.sqrt(MIN_PARAM_RATIO * 8 * d_model / tables)))
    return RetrievalSizes(n_sub * n_sub, heads, k, d_key)


def fill_sizes(d_model: int, kind: str, n_keys: int | None, heads: int | None, k: int | None,
               d_key: int | None) -> RetrievalSizes:
    """Explicit sizes win; ``None`` (``null`` in a layer config) takes the matched rule's value."""
    rule = matched_sizes(d_model, kind)
    return RetrievalSizes(rule.n_keys if n_keys is None else n_keys, rule.heads if heads is None else heads,
                          rule.k if k is None else k, rule.d_key if d_key is None else d_key)
