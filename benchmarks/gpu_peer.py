"""PEER on one GPU: the Triton kernels' correctness at full size, then their time against the torch paths, the
memory-bandwidth floor and PyPI PEER-pytorch. Needs a CUDA GPU, torch and Triton; PEER-pytorch is optional.

    python -m benchmarks.gpu_peer --out benchmarks/gpu          # writes gpu_peer.json and GPU.md there

Shapes: d_model=1024, 4096 tokens, h=8, k=16 (h*k = 128 experts per token), d_key=128, fp32 (TF32 off).
Times are medians of CUDA-event-timed repetitions after warm-up (triton.testing.do_bench).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.cases import peer_pytorch, train_step
from peerlab.mixers.ffw import FeedForward
from peerlab.mixers.peer import PEER
from peerlab.mixers.peer_experts import experts_chunked, experts_torch
from peerlab.model import ModelShape, Transformer

D, TOKENS, HEADS, K, D_KEY = 1024, 4096, 8, 16, 128


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second: the achievable memory bandwidth."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms / 1e3)


def expert_inputs(n: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(TOKENS, D, device="cuda", generator=g).requires_grad_()
    indices = torch.randint(0, n, (TOKENS, HEADS * K), device="cuda", generator=g)
    weights = torch.rand(TOKENS, HEADS * K, device="cuda", generator=g).softmax(-1).requires_grad_()
    down = (torch.randn(n, D, device="cuda", generator=g) * 0.02).requires_grad_()
    up = (torch.randn(n, D, device="cuda", generator=g) * 0.02).requires_grad_()
    probe = torch.randn(TOKENS, D, device="cuda", generator=g)
    return x, indices, weights, down, up, probe


def expert_fns():
    from peerlab.mixers.peer_triton import experts_triton

    return {
        "triton": lambda x, i, w, d, u: experts_triton(x, i, w, d, u, "gelu", True),
        "chunked": lambda x, i, w, d, u: experts_chunked(x, i, w, d, u, F.gelu, 256, True),
        "torch": lambda x, i, w, d, u: experts_torch(x, i, w, d, u, F.gelu, True),
    }


def dense_grad(g: torch.Tensor) -> torch.Tensor:
    return g.coalesce() if g.is_sparse else g


def check_correctness(report: dict) -> None:
    """Triton against the torch autograd path at full size, fp32: output and the four gradients."""
    n = 1024**2
    x, indices, weights, down, up, probe = expert_inputs(n)
    outs = {}
    for name, fn in expert_fns().items():
        if name == "chunked":
            continue
        y = fn(x, indices, weights, down, up)
        grads = torch.autograd.grad((y * probe).sum(), [x, weights, down, up])
        outs[name] = [y.detach()] + [dense_grad(g) for g in grads]
    rows = {}
    for label, a, b in zip(["y", "x", "router weights", "down", "up"], outs["triton"], outs["torch"], strict=True):
        if a.is_sparse:
            assert torch.equal(a.indices(), b.indices()), f"{label}: different rows"
            a, b = a.values(), b.values()
        err = ((a - b).abs().max() / b.abs().max()).item()
        rows[label] = err
        print(f"  correctness {label:15s} max|diff|/max|ref| = {err:.2e}", flush=True)
    report["correctness_rel_err"] = rows
    report["correctness_pass"] = all(v < 1e-4 for v in rows.values())
    del outs


def time_experts(report: dict, bandwidth: float) -> None:
    """Expert part forward+backward per impl, at N = 128^2 and 1024^2; peak memory above the inputs."""
    report["experts"] = [row for n in (128**2, 1024**2) for row in _time_experts_at(n, bandwidth)]


def _time_experts_at(n: int, bandwidth: float) -> list[dict]:
    x, indices, weights, down, up, probe = expert_inputs(n)
    floor_bytes = 4 * TOKENS * HEADS * K * D * 4  # u and v rows read in forward, read again in backward
    rows = []
    for name, fn in expert_fns().items():
        def forward(fn=fn):
            return fn(x, indices, weights, down, up)

        def step(forward=forward):
            torch.autograd.grad((forward() * probe).sum(), [x, weights, down, up])

        peak = peak_mib(step)
        fwd, total = bench_ms(forward), bench_ms(step)
        floor_ms = floor_bytes / bandwidth * 1e3
        rows.append({"n": n, "impl": name, "fwd_ms": fwd, "fwd_bwd_ms": total, "peak_mib": peak,
                     "floor_ms": floor_ms, "x_floor": total / floor_ms})
        print(f"  experts N={n:8d} {name:8s} fwd {fwd:7.3f} ms  fwd+bwd {total:7.3f} ms  peak {peak:8.0f} MiB  "
              f"floor {floor_ms:.3f} ms ({total / floor_ms:.1f}x)", flush=True)
    return rows


def peak_mib(step) -> float:
    """Peak CUDA memory of one step above what was allocated before it (after one warm-up step)."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_layers(report: dict) -> None:
    """Whole layers (router + experts) forward+backward, ours per impl against PEER-pytorch."""
    report["layers"] = [row for n in (128**2, 1024**2) for row in _time_layers_at(n)]


def _time_layers_at(n: int) -> list[dict]:
    makers = {f"peerlab-{impl}": functools.partial(PEER, D, n_experts=n, heads=HEADS, k=K, d_key=D_KEY, impl=impl,
                                                   chunk_tokens=256) for impl in ("triton", "chunked", "torch")}
    makers["PEER-pytorch"] = functools.partial(peer_pytorch, math.isqrt(n), D)
    rows = []
    for name, make in makers.items():
        try:
            layer = make().cuda().train()
        except ImportError as exc:
            print(f"  layer {name}: skipped ({exc})", flush=True)
            continue
        x = torch.randn(4, TOKENS // 4, D, device="cuda", requires_grad=True)
        probe = torch.randn_like(x)

        def step(layer=layer, x=x, probe=probe):
            layer.zero_grad(set_to_none=True)
            (layer(x) * probe).sum().backward()

        peak = peak_mib(step)
        ms = bench_ms(step)
        rows.append({"n": n, "layer": name, "fwd_bwd_ms": ms, "peak_mib": peak})
        print(f"  layer N={n:8d} {name:16s} fwd+bwd {ms:8.3f} ms  peak {peak:8.0f} MiB", flush=True)
        del layer, x, probe, step
        torch.cuda.empty_cache()
    return rows


LM = ModelShape(vocab_size=32768, d_model=D, n_layer=8, n_head=16, seq_len=1024)
LM_BATCH = 8


def time_train_steps(report: dict) -> None:
    """Full training steps (forward, backward, clipping, LazyAdamW) of an LM with PEER (Triton, sparse expert
    gradients) in the middle block against its dense backbone; fp32 weights, TF32 matmuls."""
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name, n in (("dense", None), ("peer-128^2", 128**2), ("peer-1024^2", 1024**2)):
        peer = functools.partial(PEER, n_experts=n, heads=HEADS, k=K, d_key=D_KEY, impl="triton") if n else None
        with torch.device("cuda"):
            model = Transformer(LM, functools.partial(FeedForward, hidden_mult=4.0), peer, "middle").train()
        step = train_step(model, torch.randint(0, LM.vocab_size, (LM_BATCH, LM.seq_len + 1), device="cuda"), lr=1e-3)
        ms = bench_ms(step)
        row = {"model": name, "step_ms": ms, "tokens_per_s": LM_BATCH * LM.seq_len / (ms / 1e3),
               "params": sum(p.numel() for p in model.parameters())}
        rows.append(row)
        print(f"  train step {name:12s} {ms:8.2f} ms  {row['tokens_per_s']:9.0f} tokens/s", flush=True)
        del model, step
        torch.cuda.empty_cache()
    report["train_steps"] = rows
    torch.backends.cuda.matmul.allow_tf32 = False


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# PEER on one GPU", "",
             f"{report['device']}, torch {report['torch']}, Triton {report['triton']}, fp32 (TF32 off), "
             f"d_model={D}, {TOKENS} tokens, h={HEADS}, k={K}, d_key={D_KEY}. Made by `python -m benchmarks.gpu_peer` "
             f"on {report['date']}. Medians of CUDA-event-timed repetitions (triton.testing.do_bench).", "",
             f"Measured copy bandwidth (read + write): {report['bandwidth_gbs']:.0f} GB/s. Floor: the expert rows "
             "that must be read, u and v once forward and once backward (4 x tokens x h*k x d_model x 4 bytes), "
             "at that bandwidth.", ""]
    if "correctness_rel_err" in report:
        lines += ["Triton vs the torch autograd path at N = 1024^2, max |diff| / max |ref|: " + ", ".join(
            f"{k} {v:.1e}" for k, v in report["correctness_rel_err"].items()), ""]
    if report.get("experts"):
        lines += ["## Expert part (gather, dot, GELU, weight, sum), forward + backward", "",
                  "| N | impl | fwd ms | fwd+bwd ms | x floor | peak MiB |", "|---|---|---|---|---|---|"]
        for r in report["experts"]:
            lines.append(f"| {r['n']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['x_floor']:.1f} | "
                         f"{r['peak_mib']:.0f} |")
        lines.append("")
    if report.get("layers"):
        lines += ["## Whole layer (router + experts), forward + backward", "",
                  "| N | layer | fwd+bwd ms | peak MiB |", "|---|---|---|---|"]
        for r in report["layers"]:
            lines.append(f"| {r['n']} | {r['layer']} | {r['fwd_bwd_ms']:.3f} | {r['peak_mib']:.0f} |")
        lines.append("")
    if report.get("train_steps"):
        dense = next(r for r in report["train_steps"] if r["model"] == "dense")
        lines += [f"## Training steps: LM d_model={D}, {LM.n_layer} blocks, vocab {LM.vocab_size}, {LM_BATCH}x{LM.seq_len} "
                  "tokens; forward, backward, clipping, LazyAdamW; TF32 matmuls", "",
                  "| model | params | step ms | tokens/s | x dense |", "|---|---|---|---|---|"]
        for r in report["train_steps"]:
            lines.append(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['step_ms']:.2f} | {r['tokens_per_s']:.0f} | "
                         f"{r['tokens_per_s'] / dense['tokens_per_s']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "gpu")
    ap.add_argument("--only-train-steps", action="store_true", help="run the training-step section alone")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_peer needs a CUDA GPU")
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d")}
    report["bandwidth_gbs"] = copy_bandwidth() / 1e9
    print(f"{report['device']}: copy bandwidth {report['bandwidth_gbs']:.0f} GB/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = (check_correctness, lambda r: time_experts(r, report["bandwidth_gbs"] * 1e9), time_layers,
                time_train_steps)
    if args.only_train_steps:
        sections = (time_train_steps,)
    for section in sections:
        try:
            section(report)
        except Exception:  # keep what the other sections measured
            traceback.print_exc()
            report.setdefault("errors", []).append(traceback.format_exc(limit=3))
        (args.out / "gpu_peer.json").write_text(json.dumps(report, indent=2))
        write_markdown(report, args.out / "GPU.md")
    print(f"wrote {args.out / 'GPU.md'}")


if __name__ == "__main__":
    main()
