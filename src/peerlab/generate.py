"""Text from a checkpoint: ``python generate.py ckpt=<path> prompt="..." max_new_tokens=N temperature=T top_k=K
seed=S`` (``configs/generate.yaml``), and the Python API behind it.

The checkpoint is loaded as data (``peerlab.load``: its pickle scanned, its saved settings checked, the model
rebuilt and its weights loaded). Sampling is autoregressive, one token at a time, with a KV cache: each prompt runs
once, then each step runs one new token per sequence against the cached keys and values of the positions before it
(``peerlab.model.KVCache``), so the time per token stays flat in the prefix. The model runs in eval mode: PEER's and
PKM's query BatchNorm use their running statistics, so every token's retrieval depends on that token alone and the
cache gives what full passes give. MoE's expert choice routes among a pass's tokens, which makes it non-causal; such
a model runs without the cache, the whole context (the last ``seq_len`` tokens) at every step, as in evaluation.
Several prompts generate together (``prompts``), each ending at end-of-text or at a stop string (``stop``). The draws are a pure function of ``seed``: the same seed, prompt
and checkpoint give the same text (on the same device and torch build).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from peerlab.model import KVCache, Transformer


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy (the most likely token at every step)
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    seed: int = 0


@torch.no_grad()
def sample(model: Transformer, prompt: list[int], settings: Sampling, stop: int | None = None,
           cache: bool = True) -> list[int]:
    """The tokens that follow ``prompt`` (ids), drawn with ``settings``; ends early at the ``stop`` token."""
    return sample_batch(model, [prompt], settings, stop, cache=cache)[0]


@torch.no_grad()
def sample_batch(model: Transformer, prompts: list[list[int]], settings: Sampling, stop: int | None = None,
                 done: Callable[[int, list[int]], bool] | None = None, cache: bool = True) -> list[list[int]]:
    """The tokens that follow each prompt, generated together. Prompt ``i`` draws from its own generator, seeded
    ``settings.seed + i``, so it gets the tokens it gets alone with that seed. A sequence ends at the ``stop`` token,
    or when ``done(i, its tokens so far)`` says so (stop strings); the others go on.

    With ``cache`` (and a model whose mixers act on each token alone: ``Transformer.can_cache``), each prompt runs
    once and every later step runs one new token per sequence against a :class:`~peerlab.model.KVCache`; once a
    sequence outgrows ``seq_len``, its window slides and every step runs its last ``seq_len`` tokens whole, as
    without a cache (the positions of the window change each step)."""
    device = next(model.parameters()).device
    seq_len = model.shape.seq_len
    generators = [torch.Generator(device="cpu").manual_seed(settings.seed + i) for i in range(len(prompts))]
    tokens = [list(p) for p in prompts]
    outs: list[list[int]] = [[] for _ in prompts]
    open_rows = set(range(len(prompts)))
    kv = None
    cached = cache and model.can_cache()
    for _ in range(settings.max_new_tokens):
        if cached and max(len(t) for t in tokens) <= seq_len:
            if kv is None:  # each prompt alone into its row of the cache
                kv = KVCache(model, len(tokens))
                last = torch.stack([model(torch.tensor([t], device=device), cache=kv.row(i))[0, -1]
                                    for i, t in enumerate(tokens)])
            else:  # one new token per sequence (finished ones too, to keep the batch whole)
                last = model(torch.tensor([[t[-1]] for t in tokens], device=device), cache=kv)[:, -1]
        else:
            last = torch.stack([model(torch.tensor([t[-seq_len:]], device=device))[0, -1] for t in tokens])
        for i in range(len(tokens)):
            if i not in open_rows:  # a finished sequence keeps pace, unread, so that one pass serves all
                tokens[i].append(int(last[i].argmax()))
                continue
            token = draw(last[i].float().cpu(), settings, generators[i])
            tokens[i].append(token)
            outs[i].append(token)
            if (stop is not None and token == stop) or (done is not None and done(i, outs[i])):
                open_rows.discard(i)
        if not open_rows:
            break
    return outs


def draw(logits: torch.Tensor, settings: Sampling, generator: torch.Generator) -> int:
    """One token from a position's logits: the most likely (temperature 0), or drawn from the tempered top-k."""
    if settings.temperature == 0:
        return int(logits.argmax())
    logits = logits / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.numel():
        kth = logits.topk(settings.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def complete(model: Transformer, tokenizer: Tokenizer, prompt: str | list[str], settings: Sampling,
             stop: tuple[str, ...] | list[str] = (), cache: bool = True) -> str | list[str]:
    """The text that follows ``prompt`` (or each of a list of prompts, generated together). An empty prompt starts
    from the end-of-text token, as a document does. A text ends at end-of-text or before the first ``stop`` string
    it reaches (the string itself is left out)."""
    from peerlab.data.tokenizer import eot_id

    eot = eot_id(tokenizer)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    ids = [tokenizer.encode(p).ids if p else [eot] for p in prompts]

    def cut(text: str) -> str:
        ends = [text.find(s) for s in stop if s and s in text]
        return text[: min(ends)] if ends else text

    def done(i: int, out: list[int]) -> bool:
        text = tokenizer.decode(out)
        return any(s and s in text for s in stop)

    outs = sample_batch(model, ids, settings, stop=eot, done=done if stop else None, cache=cache)
    texts = [cut(tokenizer.decode(out)) for out in outs]
    return texts[0] if isinstance(prompt, str) else texts


def check(cfg) -> None:
    """generate.py's values, each refused in one line naming the key."""
    from omegaconf import OmegaConf

    from peerlab.config import ConfigError

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt: missing; give ckpt=<a .ckpt file> (e.g. runs/<run>/checkpoints/last.ckpt)")
    prompts = list(cfg.prompt) if OmegaConf.is_list(cfg.prompt) else [cfg.prompt]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"prompt={cfg.prompt!r}: must be text, or a list of texts; quote it: prompt='\"The experts\"'")
    stop = cfg.get("stop", [])
    if not (OmegaConf.is_list(stop) and all(isinstance(s, str) and s for s in stop)):
        raise ConfigError(f"stop={stop!r}: must be a list of non-empty strings, e.g. stop='[\"\\n\\n\"]'")
    if not isinstance(cfg.get("cache", True), bool):
        raise ConfigError(f"cache={cfg.cache!r}: must be true or false")
    n = cfg.max_new_tokens
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ConfigError(f"max_new_tokens={n!r}: must be an integer >= 1")
    t = cfg.temperature
    if not (isinstance(t, int | float) and not isinstance(t, bool) and t >= 0):
        raise ConfigError(f"temperature={t!r}: must be a number >= 0 (0: greedy)")
    k = cfg.top_k
    if not (k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
        raise ConfigError(f"top_k={k!r}: must be an integer >= 1, or null (every token)")
    if not (isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool)):
        raise ConfigError(f"seed={cfg.seed!r}: must be an integer")


def run(cfg) -> str:
    from omegaconf import OmegaConf

    import peerlab

    check(cfg)
    model, tokenizer = peerlab.load(cfg.ckpt)
    settings = Sampling(cfg.max_new_tokens, float(cfg.temperature), cfg.top_k, cfg.seed)
    prompts = list(cfg.prompt) if OmegaConf.is_list(cfg.prompt) else cfg.prompt
    # Hydra keeps "\n" as backslash-n: a stop string typed on the command line means the newline
    stop = [text.replace("\\n", "\n").replace("\\t", "\t") for text in cfg.get("stop", [])]
    texts = complete(model, tokenizer, prompts, settings, stop=stop, cache=cfg.get("cache", True))
    for prompt, text in zip([prompts] if isinstance(prompts, str) else prompts,
                            [texts] if isinstance(texts, str) else texts, strict=True):
        print(prompt + text, flush=True)
    return texts
