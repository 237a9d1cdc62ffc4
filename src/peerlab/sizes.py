"""Print the model-size presets with their parameter counts and FLOPs per token.

    python -m peerlab.sizes                       # dense, vocab 4096 (the embedded corpus's BPE), seq_len 128
    python -m peerlab.sizes --vocab 50257 --seq-len 2048 --layer peer
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from peerlab.builders import build_model
from peerlab.flops import flops_breakdown

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def table(vocab: int, seq_len: int, layer: str, config_dir: Path = CONFIGS) -> str:
    layer_cfg = OmegaConf.load(config_dir / "layer" / f"{layer}.yaml")
    if "defaults" in layer_cfg:  # presets that extend another (peer_small -> peer)
        base = OmegaConf.load(config_dir / "layer" / f"{layer_cfg.defaults[0]}.yaml")
        layer_cfg = OmegaConf.merge(base, {k: v for k, v in layer_cfg.items() if k != "defaults"})
    rows = ["| preset | depth | d_model | heads | params | non-embedding | active | train GFLOP/token |",
            "|---|---|---|---|---|---|---|---|"]
    def size(m):  # presets with the same depth differ in width (micro < tiny < d2)
        return m.depth, m.d_model or m.depth * m.aspect_ratio

    for m in sorted((OmegaConf.load(p) for p in (config_dir / "model").glob("*.yaml")), key=size):
        with torch.device("meta"):
            model = build_model(m, layer_cfg, vocab_size=vocab, seq_len=seq_len)
        s = model.shape
        emb = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
        rows.append(f"| {m.name} | {s.n_layer} | {s.d_model} | {s.n_head} | {model.num_params() / 1e6:.2f}M | "
                    f"{(model.num_params() - emb) / 1e6:.2f}M | {model.active_params() / 1e6:.2f}M | "
                    f"{flops_breakdown(model).train / 1e9:.4f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--layer", default="ffw", help="a configs/layer option, placed in the middle block")
    args = ap.parse_args()
    print(table(args.vocab, args.seq_len, args.layer))


if __name__ == "__main__":
    main()
