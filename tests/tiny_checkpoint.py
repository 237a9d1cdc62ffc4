"""A checkpoint as training writes one (weights, saved settings, tokenizer), of a small model of any mixer with
calibrated BatchNorm statistics, made in a second: for the export and harness tests."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

MODEL = {"name": "w", "depth": 2, "aspect_ratio": 16, "head_dim": 16, "d_model": 32, "ffw_mult": 4.0,
         "activation": "gelu", "sparse_blocks": "all"}
LAYERS = {"ffw": {}, "moe": {"n_experts": 4}, "moe_tc": {"n_experts": 4}, "moe_fine": {},
          "pkm": {"n_memories": 16**2, "d_key": 8, "k": 8}, "peer": {"n_experts": 16**2, "d_key": 8},
          "peer_linear": {"n_experts": 16**2, "d_key": 8}, "memory_plus": {}}
VOCAB, SEQ = 300, 24
TEXTS = ["the history of the river and the town", "a short note on tables of experts", "what the model reads"] * 4


def write_checkpoint(path, layer: str) -> None:
    """A checkpoint as training writes one (weights, saved settings, tokenizer), of a model with calibrated
    BatchNorm statistics, made in a second."""
    from peerlab.config import OptimConfig
    from peerlab.data.tokenizer import train_bpe
    from peerlab.lit_module import LanguageModel
    from peerlab.sizes import load_layer

    cfg = OmegaConf.to_container(load_layer(layer), resolve=True)
    cfg.update(LAYERS[layer])
    torch.manual_seed(0)
    module = LanguageModel(MODEL, cfg, OmegaConf.to_container(OmegaConf.structured(OptimConfig)), VOCAB, SEQ,
                           tokens_per_step=4 * SEQ, max_steps=1, budget=1e9)
    module.model.train()
    with torch.no_grad():
        module.model(torch.randint(0, VOCAB, (4, SEQ)))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "tokenizer": train_bpe(TEXTS, VOCAB).to_str(), "peerlab_config": None}, path)
