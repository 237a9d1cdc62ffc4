from __future__ import annotations

import functools

import pytest
import torch

from peerlab.mixers.ffw import FeedForward
from peerlab.model import ModelShape, Transformer, resolve_sparse_blocks


def make(n_layer=3, sparse=None, blocks="middle"):
    shape = ModelShape(vocab_size=100, d_model=32, n_layer=n_layer, n_head=2, seq_len=16)
    return Transformer(shape, functools.partial(FeedForward, hidden_mult=4.0), sparse, blocks)


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = make().eval()
    idx = torch.randint(0, 100, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, 100, (2, 6))
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("spec,n,expected", [("middle", 12, [5]), ("middle", 1, [0]), ("middle", 2, [0]),
                                             ("all", 3, [0, 1, 2]), ("none", 3, []), ([2, 0], 3, [0, 2]), (1, 3, [1])])
def test_sparse_blocks(spec, n, expected):
    assert resolve_sparse_blocks(spec, n) == expected


@pytest.mark.parametrize("spec", ["middel", [3], [-1]])
def test_sparse_blocks_errors(spec):
    with pytest.raises(ValueError, match="sparse_blocks"):
        resolve_sparse_blocks(spec, 3)


def test_sparse_factory_goes_only_to_chosen_blocks():
    wide = functools.partial(FeedForward, hidden_mult=8.0)
    model = make(n_layer=4, sparse=wide, blocks="middle")
    widths = [m.d_hidden for m in model.mixers]
    assert widths == [128, 256, 128, 128]


def test_too_long_sequence_is_an_error():
    with pytest.raises(ValueError, match="seq_len=16"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_shape_validation():
    with pytest.raises(ValueError, match="not divisible"):
        ModelShape(vocab_size=10, d_model=30, n_layer=1, n_head=4, seq_len=8)
