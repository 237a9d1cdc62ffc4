"""Generation time per token with and without the KV cache, on this machine's CPU: 1,000 greedy tokens of a model
with ``seq_len`` 1024 (PEER in its middle block), from a 24-token prompt, timed in windows of 100 tokens.

    python -m benchmarks.kv_cache > benchmarks/kv_cache.md

Without the cache every new token runs the whole context (the time per token grows with the prefix); with it, one
token per step against the cached keys and values (flat). Random weights: the time does not depend on them, and
the two runs must draw the same tokens, which is checked.
"""

from __future__ import annotations

import time

import torch

from peerlab.builders import build_model
from peerlab.generate import Sampling, sample_batch
from peerlab.sizes import load_layer

MODEL = {"name": "d4", "depth": 4, "aspect_ratio": 64, "head_dim": 64, "d_model": None, "ffw_mult": 4.0,
         "activation": "gelu", "sparse_blocks": "middle"}
SEQ, NEW, WINDOW, VOCAB = 1024, 1000, 100, 4096


def timed(model, prompt: list[int], cache: bool) -> tuple[list[int], list[float]]:
    """The tokens drawn, and the seconds each window of ``WINDOW`` new tokens took."""
    stamps: list[float] = []
    tokens: list[int] = []

    def clock(i: int, out: list[int]) -> bool:  # called after every new token
        if len(out) % WINDOW == 0:
            stamps.append(time.perf_counter())
        return False

    start = time.perf_counter()
    tokens = sample_batch(model, [prompt], Sampling(max_new_tokens=NEW, temperature=0), done=clock, cache=cache)[0]
    edges = [start, *stamps]
    return tokens, [b - a for a, b in zip(edges, edges[1:], strict=False)]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    layer = load_layer("peer_small")
    model = build_model(MODEL, layer, VOCAB, SEQ).eval()
    prompt = list(range(1, 25))
    cached, with_cache = timed(model, prompt, cache=True)
    uncached, without = timed(model, prompt, cache=False)
    assert cached == uncached, "cached and uncached decoding drew different tokens"
    print(f"Greedy generation of {NEW} tokens after a 24-token prompt, d4 model (d_model 256, PEER N = 128^2 in "
          f"block 1), seq_len {SEQ}, 1 CPU thread (`python -m benchmarks.kv_cache`); milliseconds per new token in "
          f"windows of {WINDOW}; the same tokens drawn both ways:\n")
    print("| new tokens | " + " | ".join(f"{i * WINDOW + 1}-{(i + 1) * WINDOW}" for i in range(len(with_cache)))
          + " | total s |")
    print("|---|" + "---|" * (len(with_cache) + 1))
    for name, times in (("KV cache", with_cache), ("no cache", without)):
        print(f"| {name} | " + " | ".join(f"{1000 * t / WINDOW:.1f}" for t in times) + f" | {sum(times):.1f} |")


if __name__ == "__main__":
    main()
