"""Print the model-size presets with their parameter counts and FLOPs per token, or the cost structure of a study.

    python -m peerlab.sizes                       # dense, vocab 4096 (the embedded corpus's BPE), seq_len 128
    python -m peerlab.sizes --vocab 50257 --seq-len 2048 --layer peer
    python -m peerlab.sizes --cost s2,s3,s4,s5,s6 --vocab 512   # FLOP shares and the matched layers' ratios
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from peerlab.builders import build_model
from peerlab.config import CONFIGS
from peerlab.flops import flops_breakdown


def load_layer(layer: str, config_dir: Path = CONFIGS):
    """A ``configs/layer`` option as Hydra composes it (presets extend another: peer_small -> peer)."""
    layer_cfg = OmegaConf.load(config_dir / "layer" / f"{layer}.yaml")
    if "defaults" in layer_cfg:
        base = load_layer(str(layer_cfg.defaults[0]), config_dir)
        layer_cfg = OmegaConf.merge(base, {k: v for k, v in layer_cfg.items() if k != "defaults"})
    return layer_cfg


def table(vocab: int, seq_len: int, layer: str, config_dir: Path = CONFIGS) -> str:
    layer_cfg = load_layer(layer, config_dir)
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


def _shares(model) -> tuple[float, float, float, float]:
    """FLOP shares of attention, all FFWs and the LM head, and the one swapped FFW's share, of a dense model."""
    f = flops_breakdown(model)
    ffw_one = f.mixers / model.shape.n_layer
    return ((f.attention_proj + f.attention_mix) / f.forward, f.mixers / f.forward, f.lm_head / f.forward,
            ffw_one / f.forward)


def cost_structure(models: list[str], vocab: int, seq_len: int, layers: tuple[str, ...] = ("peer_matched", "pkm_matched", "moe_matched"),
                   config_dir: Path = CONFIGS) -> str:
    """Per model: the dense model's FLOP shares, then each sparse layer's FLOPs and parameters against the FFW it
    replaces and the whole sparse model's FLOPs against dense; last, the paper's setting for comparison."""
    from peerlab.mixers.ffw import FeedForward

    head = ["model", "d_model x depth", "attention / FFW / head", "swapped FFW"]
    for layer in layers:
        head += [f"{layer}: FLOPs / FFW", "params / FFW", "model FLOPs / dense"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, model_cfg, vocab: int, seq_len: int, layer_cfgs: list) -> str:
        with torch.device("meta"):
            dense = build_model(model_cfg, load_layer("ffw", config_dir), vocab, seq_len)
            ffw = FeedForward(dense.shape.d_model, hidden_mult=model_cfg["ffw_mult"])
        attn, ffws, lm, one = _shares(dense)
        cells = [name, f"{dense.shape.d_model} x {dense.shape.n_layer}", f"{attn:.0%} / {ffws:.0%} / {lm:.0%}", f"{one:.1%}"]
        for layer_cfg in layer_cfgs:
            with torch.device("meta"):
                sparse_model = build_model(model_cfg, layer_cfg, vocab, seq_len)
            mixer = sparse_model.blocks[sparse_model.sparse_blocks[0]].mixer
            params = sum(p.numel() for p in mixer.parameters()) / sum(p.numel() for p in ffw.parameters())
            cells += [f"{mixer.flops_per_token() / ffw.flops_per_token():.2f}", f"{params:.0f}x",
                      f"{flops_breakdown(sparse_model).forward / flops_breakdown(dense).forward:.3f}"]
        return "| " + " | ".join(cells) + " |"

    for name in models:
        rows.append(row(name, OmegaConf.load(config_dir / "model" / f"{name}.yaml"), vocab, seq_len,
                        [load_layer(layer, config_dir) for layer in layers]))
    paper_model = {"name": "paper", "depth": 12, "aspect_ratio": 64, "head_dim": 64, "d_model": 1024, "ffw_mult": 4.0,
                   "activation": "gelu", "sparse_blocks": "middle"}
    paper_name = lambda layer: next(n for n in (layer.replace("_matched", ""), layer)  # noqa: E731
                                    if (config_dir / "layer" / f"{n}.yaml").is_file())
    paper_layers = [load_layer(paper_name(layer), config_dir) for layer in layers]
    rows.append(row("paper (d_model 1024, 12 blocks, seq 2048, vocab 32k)", paper_model, 32000, 2048, paper_layers))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser, fail

    ap = ArgumentParser(prog="python -m peerlab.sizes", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--layer", default=None, help="a configs/layer option, placed in the middle block (default ffw); "
                                                 "with --cost, the one sparse layer costed (default: the matched three)")
    ap.add_argument("--cost", default=None, help="comma-separated model presets: print their cost structure instead")
    args = ap.parse_args(argv)
    for flag, value in (("--vocab", args.vocab), ("--seq-len", args.seq_len)):
        if value < 1:
            fail(f"{flag}={value}: must be >= 1")
    layers = sorted(p.stem for p in (CONFIGS / "layer").glob("*.yaml"))
    if args.layer is not None and args.layer not in layers:
        fail(f"--layer={args.layer}: not a configs/layer option; allowed: {', '.join(layers)}")
    if args.cost:
        models = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
        unknown = [m for m in args.cost.split(",") if m not in models]
        if unknown:
            fail(f"--cost={args.cost}: {', '.join(unknown)} not a configs/model option; allowed: {', '.join(models)}")
        costed = (args.layer,) if args.layer else ("peer_matched", "pkm_matched", "moe_matched")
        print(cost_structure(args.cost.split(","), args.vocab, args.seq_len, costed))
        return 0
    print(table(args.vocab, args.seq_len, args.layer or "ffw"))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
