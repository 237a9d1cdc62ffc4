"""What `make bench` measures: one builder per case, each returning a ``step()`` to time.

Layer cases run one layer's forward+backward (no optimizer) on 8x128 tokens at d_model=256: PEER per impl and N,
PyPI PEER-pytorch with the paper's routing (softmax over each head's top-k, ``non_competing_scores=False``), our
PKM and PyPI product-key-memory, MoE and the dense FFW. Train-step cases run a full optimizer step (forward,
backward, clipping, LazyAdamW) of a small LM (d_model=256, 4 blocks, vocab 4096) with PEER in the middle block or
with its dense backbone, and report tokens/s as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from peerlab.mixers.ffw import FeedForward
from peerlab.mixers.moe import MoE
from peerlab.mixers.peer import PEER
from peerlab.mixers.pkm import PKM
from peerlab.model import ModelShape, Transformer
from peerlab.optim import LazyAdamW, clip_grad_norm

D_MODEL, BATCH, SEQ = 256, 8, 128
HEADS, K, D_KEY = 8, 16, 128
LM = ModelShape(vocab_size=4096, d_model=D_MODEL, n_layer=4, n_head=4, seq_len=SEQ)

Step = Callable[[], None]


def peer(n: int, **kwargs) -> PEER:
    return PEER(D_MODEL, n_experts=n * n, heads=HEADS, k=K, d_key=D_KEY, **kwargs)


def peer_pytorch(n: int, d_model: int = D_MODEL) -> torch.nn.Module:
    from PEER_pytorch import PEER as LucidPEER  # pip install '.[bench]'

    # The paper's routing (softmax over each head's top-k); its dim_key is per sub-key half: 64 is our d_key = 128.
    return LucidPEER(d_model, heads=HEADS, num_experts=n * n, num_experts_per_head=K, dim_key=D_KEY // 2,
                     non_competing_scores=False)


def product_key_memory(n: int) -> torch.nn.Module:
    from product_key_memory import PKM as LucidPKM  # pip install '.[bench]'

    return LucidPKM(D_MODEL, heads=HEADS, num_keys=n, topk=32, dim_head=D_KEY // 2)


LAYERS: dict[str, Callable[[], torch.nn.Module]] = {
    "ffw": lambda: FeedForward(D_MODEL, hidden_mult=4.0),
    **{f"peer-torch-{n}^2": functools.partial(peer, n, impl="torch", sparse_grads=False) for n in (128, 512)},
    **{f"peer-chunked-{n}^2": functools.partial(peer, n, impl="chunked") for n in (128, 256, 512, 1024)},
    "peer-chunked-dense-grads-1024^2": functools.partial(peer, 1024, impl="chunked", sparse_grads=False),
    **{f"PEER-pytorch-{n}^2": functools.partial(peer_pytorch, n) for n in (128, 512, 1024)},
    **{f"pkm-{n}^2": (lambda n=n: PKM(D_MODEL, n_memories=n * n, heads=HEADS, k=32, d_key=D_KEY)) for n in (128, 512)},
    "product-key-memory-128^2": functools.partial(product_key_memory, 128),
    **{f"moe-ec-E{e}": (lambda e=e: MoE(D_MODEL, n_experts=e, routing="expert_choice")) for e in (16, 128)},
    **{f"moe-tc1-E{e}": (lambda e=e: MoE(D_MODEL, n_experts=e, routing="token_choice", top_k=1)) for e in (16, 128)},
}

TRAIN_STEPS: dict[str, Callable[[], Transformer]] = {
    "step-dense": lambda: Transformer(LM, functools.partial(FeedForward, hidden_mult=4.0)),
    **{f"step-peer-{n}^2": (lambda n=n: Transformer(LM, functools.partial(FeedForward, hidden_mult=4.0),
                                                    functools.partial(peer_factory, n=n), "middle"))
       for n in (128, 1024)},
    "step-peer-dense-grads-1024^2": lambda: Transformer(
        LM, functools.partial(FeedForward, hidden_mult=4.0),
        functools.partial(peer_factory, n=1024, sparse_grads=False), "middle"),
}


# The matched study's models (experiments/isoflop_cpu_matched.yaml) as it trains them: vocab 512, 16 x 128 tokens,
# one thread per process; a matched sparse layer costs ~0.28x the FFW it replaces, so its model should train at
# >= 0.8x its dense backbone's tokens/s.
STUDY_BATCH, STUDY_SEQ, STUDY_VOCAB = 16, 128, 512
STUDY_MODELS = ("s2", "s3", "s4", "s5", "s6")
STUDY_LAYERS = ("ffw", "peer_matched", "pkm_matched", "moe_matched", "memory_plus", "peer_linear", "moe_fine",
                "peer_matched_wide")
STUDY_STEPS = {f"study-{m}-{layer}": (m, layer) for m in STUDY_MODELS for layer in STUDY_LAYERS}


def study_model(model_name: str, layer_name: str) -> Transformer:
    from omegaconf import OmegaConf

    from peerlab.builders import build_model
    from peerlab.sizes import CONFIGS, load_layer

    model_cfg = OmegaConf.load(CONFIGS / "model" / f"{model_name}.yaml")
    return build_model(model_cfg, load_layer(layer_name), STUDY_VOCAB, STUDY_SEQ)


def peer_factory(d_model: int, n_layer: int, n: int, **kwargs) -> PEER:
    return PEER(d_model, n_experts=n * n, heads=HEADS, k=K, d_key=D_KEY, n_layer=n_layer, impl="chunked", **kwargs)


CASES = sorted([*LAYERS, *TRAIN_STEPS, *STUDY_STEPS], key=lambda name: (name in TRAIN_STEPS, name in STUDY_STEPS, name))


def tokens_per_step(name: str) -> int:
    return STUDY_BATCH * STUDY_SEQ if name in STUDY_STEPS else BATCH * SEQ


def layer_step(layer: torch.nn.Module, batch: int, seq: int, d_model: int, g: torch.Generator) -> Step:
    """One forward + backward of ``layer`` on fixed ``(batch, seq, d_model)`` inputs drawn from ``g``, against a
    fixed random probe of its output."""
    x = torch.randn(batch, seq, d_model, generator=g).requires_grad_()
    probe = torch.randn(batch, seq, d_model, generator=g)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (layer(x) * probe).sum().backward()

    return step


def build(name: str) -> tuple[torch.nn.Module, Step]:
    """The module and a ``step()`` that runs one measured iteration on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    if name in LAYERS:
        layer = LAYERS[name]().train()
        return layer, layer_step(layer, BATCH, SEQ, D_MODEL, g)
    if name in STUDY_STEPS:
        torch.set_num_threads(1)  # the study runs two one-thread processes on two cores
        model = study_model(*STUDY_STEPS[name]).train()
        return model, train_step(model, torch.randint(0, STUDY_VOCAB, (STUDY_BATCH, STUDY_SEQ + 1), generator=g))
    model = TRAIN_STEPS[name]().train()
    return model, train_step(model, torch.randint(0, LM.vocab_size, (BATCH, SEQ + 1), generator=g))


def train_step(model: Transformer, tokens: torch.Tensor, lr: float = 2e-3, fused: bool | None = None) -> Step:
    """One full optimizer step on fixed tokens: forward, backward, clipping and LazyAdamW (``fused``: its dense
    groups' kernel, None = fused on CUDA as in training), with the mixers' expert tables in a group without weight
    decay."""
    experts = {id(p) for m in model.mixers for ps in m.optimizer_groups().values() for p in ps}
    groups = [{"params": [p for p in model.parameters() if id(p) in experts], "weight_decay": 0.0},
              {"params": [p for p in model.parameters() if id(p) not in experts], "weight_decay": 0.1}]
    optimizer = LazyAdamW([grp for grp in groups if grp["params"]], lr=lr, betas=(0.9, 0.95), fused=fused)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()

    return step
