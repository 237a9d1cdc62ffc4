"""Generation with a KV cache (``peerlab.model.KVCache``, ``peerlab.generate``): a cached step gives the logits of a
full forward pass, for every mixer, so cached decoding draws the tokens uncached decoding draws; prompts of different
lengths generate together as each alone; stop strings end a text."""

from __future__ import annotations

import pytest
import torch

from peerlab.builders import build_model
from peerlab.generate import Sampling, sample, sample_batch
from peerlab.model import KVCache
from peerlab.sizes import load_layer

MODEL = {"name": "w", "depth": 2, "aspect_ratio": 16, "head_dim": 16, "d_model": 32, "ffw_mult": 4.0,
         "activation": "gelu", "sparse_blocks": "all"}
LAYERS = {"ffw": {}, "moe": {"n_experts": 4, "routing": "token_choice"}, "moe_fine": {},
          "pkm": {"n_memories": 16**2, "d_key": 8, "k": 8}, "peer": {"n_experts": 16**2, "d_key": 8},
          "peer_linear": {"n_experts": 16**2, "d_key": 8}, "memory_plus": {}}
VOCAB, SEQ = 64, 24


def model_of(layer: str, **extra):
    cfg = load_layer(layer)
    cfg.update({**LAYERS.get(layer, {}), **extra})
    torch.manual_seed(0)
    model = build_model(MODEL, cfg, VOCAB, SEQ)
    # a trained query BatchNorm has running statistics of its own: give it some, then evaluate with them
    model.train()
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (4, SEQ)))
    return model.eval()


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_cached_step_gives_the_logits_of_a_full_pass(layer):
    model = model_of(layer)
    assert model.can_cache()
    idx = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model, 3)
        parts = [model(idx[:, :10], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(10, SEQ)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_cached_greedy_decoding_draws_what_uncached_draws_past_seq_len_too(layer):
    model = model_of(layer)
    greedy = Sampling(max_new_tokens=SEQ + 6, temperature=0)  # outgrows seq_len: the window slides
    prompt = [3, 14, 15, 9, 2]
    assert sample(model, prompt, greedy, cache=True) == sample(model, prompt, greedy, cache=False)
    drawn = Sampling(max_new_tokens=12, temperature=1.0, seed=4)
    assert sample(model, prompt, drawn, cache=True) == sample(model, prompt, drawn, cache=False)


def test_expert_choice_runs_without_the_cache():
    model = model_of("moe", routing="expert_choice")
    assert not model.can_cache()
    greedy = Sampling(max_new_tokens=8, temperature=0)
    assert sample(model, [1, 2, 3], greedy, cache=True) == sample(model, [1, 2, 3], greedy, cache=False)


@pytest.mark.parametrize("layer", ["peer", "pkm"])
def test_a_tokens_retrieval_does_not_depend_on_its_batch_in_eval(layer):
    model = model_of(layer)
    idx = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        together = model(idx)
        alone = torch.cat([model(idx[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["peer", "moe"])
def test_prompts_of_different_lengths_generate_together_as_each_alone(layer):
    model = model_of(layer)
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], [9, 9, 9]]
    settings = Sampling(max_new_tokens=10, temperature=1.0, seed=7)
    together = sample_batch(model, prompts, settings)
    alone = [sample(model, p, Sampling(10, 1.0, None, seed=7 + i)) for i, p in enumerate(prompts)]
    assert together == alone
    ended = sample_batch(model, prompts, settings, stop=together[1][2])  # the second ends at its third token
    assert ended[1] == together[1][:3] and len(ended[0]) >= 1


def test_stop_strings_end_a_text_before_them(tiny_run):
    import peerlab
    from peerlab.generate import complete

    model, tokenizer = peerlab.load(tiny_run["checkpoints"]["last"])
    settings = Sampling(max_new_tokens=30, seed=3)
    full = complete(model, tokenizer, "The history of", settings)
    stop = full.strip()[3:6]
    assert stop and stop in full
    cut = complete(model, tokenizer, ["The history of", "The"], settings, stop=[stop])
    assert cut[0] == full[: full.find(stop)] and stop not in cut[0]
    assert cut[1] == complete(model, tokenizer, "The", Sampling(30, 1.0, None, seed=4), stop=[stop])
