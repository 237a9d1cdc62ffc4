"""Validation shared out among data-parallel ranks: every batch is scored once, batches hold what one process's
hold, every rank runs the same number of forward passes, and padding batches count nothing."""

from __future__ import annotations

import pytest
import torch

from peerlab.data.sharding import IGNORE, Padded, ShardedBatches, batches
from peerlab.lm_loss import IGNORE as LOSS_IGNORE


@pytest.mark.parametrize("n,batch,world,limit", [(9, 4, 2, None), (10, 4, 2, None), (13, 3, 3, None), (40, 4, 2, 6),
                                                  (40, 4, 4, 5), (3, 8, 2, None), (5, 2, 4, None)])
def test_every_block_is_scored_once_in_one_process_global_batches(n, batch, world, limit):
    one = batches(n, batch * world, limit)  # what one process training on the global batch validates on
    shards = [list(ShardedBatches(n, batch, r, world, limit)) for r in range(world)]
    assert {len(s) for s in shards} == {len(one)}  # the same number of forward passes on every rank
    for i, global_batch in enumerate(one):
        real = [item for s in shards for item in s[i] if item >= 0]
        assert real == global_batch  # each global batch scored whole, once, in order of ranks
        for s in shards:
            assert len(s[i]) <= batch and (all(j >= 0 for j in s[i]) or all(j < 0 for j in s[i]))
    padding = [b for s in shards for b in s if b[0] < 0]
    assert all(0 <= -1 - j < n for b in padding for j in b)  # real blocks, which Padded gives ignored targets


def test_padding_items_carry_ignored_targets_only():
    base = [(torch.arange(4), torch.arange(1, 5)), (torch.arange(4) + 10, torch.arange(11, 15))]
    padded = Padded(base)
    x, y = padded[-2]
    assert torch.equal(x, base[1][0]) and (y == IGNORE).all() and IGNORE == LOSS_IGNORE
    assert torch.equal(padded[1][1], base[1][1])


def test_a_padding_batch_runs_the_forward_but_counts_no_loss_and_no_usage():
    from peerlab.lit_module import LanguageModel

    module = LanguageModel(model={"name": "t", "depth": 2, "aspect_ratio": 16, "head_dim": 16, "d_model": 32,
                                  "ffw_mult": 4.0, "activation": "gelu", "sparse_blocks": "middle"},
                           layer={"_target_": "peerlab.mixers.peer.PEER", "n_experts": 256, "heads": 2, "k": 4,
                                  "d_key": 8}, optim={}, vocab_size=64, seq_len=8, tokens_per_step=16, max_steps=1,
                           budget=1.0)
    module.model.eval()
    mixer = module.model.mixers[0]
    mixer.reset_usage()
    x = torch.randint(0, 64, (2, 8))
    calls = []
    mixer.register_forward_hook(lambda *a: calls.append(1))
    assert module.score_batch(x, torch.full_like(x, IGNORE)) == (0.0, 0)
    assert calls == [1] and mixer.router.usage.sum() == 0  # ran, counted nothing
    loss_sum, count = module.score_batch(x, x)
    assert count == 16 and loss_sum == pytest.approx(module.model.loss(x, x).item() * 16)
    assert mixer.router.usage.sum() > 0
