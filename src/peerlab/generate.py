"""Text from a checkpoint: ``python generate.py ckpt=<path> prompt="..." max_new_tokens=N temperature=T top_k=K
seed=S`` (``configs/generate.yaml``), and the Python API behind it.

The checkpoint is loaded as data (``peerlab.load``: its pickle scanned, its saved settings checked, the model
rebuilt and its weights loaded). Sampling is autoregressive, one token at a time, each step running the model on
the whole context (the last ``seq_len`` tokens): no KV cache, which keeps the one model the training code runs, at
the price of time quadratic in the length (fine for the small models peerlab trains; a KV cache would need every
mixer to step token by token). The model runs in eval mode: PEER's and PKM's query BatchNorm use their running
statistics, so every position sees only its past; MoE's expert choice routes among the context's positions, which
makes it non-causal in generation as in evaluation. The draws are a pure function of ``seed``: the same seed, prompt
and checkpoint give the same text (on the same device and torch build).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from peerlab.model import Transformer


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy (the most likely token at every step)
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    seed: int = 0


@torch.no_grad()
def sample(model: Transformer, prompt: list[int], settings: Sampling, stop: int | None = None) -> list[int]:
    """The tokens that follow ``prompt`` (ids), drawn with ``settings``; ends early at the ``stop`` token."""
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    tokens = list(prompt)
    out: list[int] = []
    for _ in range(settings.max_new_tokens):
        context = torch.tensor([tokens[-model.shape.seq_len:]], device=device)
        logits = model(context)[0, -1].float().cpu()
        if settings.temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / settings.temperature
            if settings.top_k is not None and settings.top_k < logits.numel():
                kth = logits.topk(settings.top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        tokens.append(token)
        out.append(token)
        if stop is not None and token == stop:
            break
    return out


def complete(model: Transformer, tokenizer: Tokenizer, prompt: str, settings: Sampling) -> str:
    """The text that follows ``prompt``. An empty prompt starts from the end-of-text token, as a document does."""
    from peerlab.data.tokenizer import eot_id

    eot = eot_id(tokenizer)
    ids = tokenizer.encode(prompt).ids if prompt else [eot]
    return tokenizer.decode(sample(model, ids, settings, stop=eot))


def check(cfg) -> None:
    """generate.py's values, each refused in one line naming the key."""
    from omegaconf import OmegaConf

    from peerlab.config import ConfigError

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt: missing; give ckpt=<a .ckpt file> (e.g. runs/<run>/checkpoints/last.ckpt)")
    if not isinstance(cfg.prompt, str):
        raise ConfigError(f"prompt={cfg.prompt!r}: must be text; quote it: prompt='\"The experts\"'")
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
    import peerlab

    check(cfg)
    model, tokenizer = peerlab.load(cfg.ckpt)
    text = complete(model, tokenizer, cfg.prompt, Sampling(cfg.max_new_tokens, float(cfg.temperature), cfg.top_k,
                                                          cfg.seed))
    print(cfg.prompt + text, flush=True)
    return text
