"""The paper's grid as users launch it, checked on the GPUs at hand in a few minutes:

1. **DDP on NCCL through Lightning.** ``train.py trainer=ddp`` with PEER (``sparse_grads=auto``: dense tables under
   NCCL), one process per visible GPU, a few hundred steps in ``bf16-mixed`` and in ``32-true``; the two loss curves
   are compared step by step. Forcing ``layer.sparse_grads=true`` must fail with our one-line error.
2. **Training-step throughput** at the paper's sequence length (2048), bf16 autocast, per-GPU batch 16 (the paper's
   128 sequences over 8 GPUs): dense, MoE (128 experts, expert choice), PKM 1024^2, PEER 128^2 and 1024^2 (Triton)
   in the middle block of d12-like (768 x 12) and d16-like (1024 x 16) LMs with GPT-2's vocabulary. Full optimizer
   steps (forward, backward, clipping, LazyAdamW); tokens/s, and model FLOP utilisation from ``peerlab.flops``
   against the GPU's bf16 dense peak.
3. **The cost of ``experiments/isoflop_paper.yaml``**: GPU-hours of every grid point at the measured utilisation
   (the nearest measured width; layer kinds as measured), so a user can cost the grid before submitting it.
4. **The memory planner against the GPU** (``peerlab.parallel.memory``): the largest point of ``isoflop_paper.yaml`` whose
   planned one-GPU peak fits this GPU, trained for two steps as that sweep runs it (its micro-batch, accumulation,
   bf16 autocast, chunked loss); ``torch.cuda.max_memory_allocated`` beside the planner's peak. One process: what one
   GPU can check (FSDP's sharding needs several; its per-rank bytes are checked on the CPU by tests/test_fsdp.py).

    python -m benchmarks.gpu_scale --out benchmarks/gpu            # on a GPU machine: gpu_scale.json + SCALE.md
    python -m benchmarks.gpu_scale --smoke --out /tmp/smoke        # CPU: the same code at toy sizes (a test runs it)

On a machine without this project's dependencies (the lent H200 has torch, Lightning, Triton and tokenizers, not
Hydra): carry wheels of ``hydra-core``, ``omegaconf`` and ``antlr4-python3-runtime==4.9.3`` and put them on
``PYTHONPATH`` (the device tool's README shows how). The DDP runs train on ``data=files`` with English text the
script writes from the Python standard library's docstrings, so neither the network nor gensim is needed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import pydoc
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
H200_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s of an H100/H200 SXM (NVIDIA's datasheet)


# ------------------------------------------------------------------------------------------- 1. DDP on NCCL
def stdlib_corpus(folder: Path, max_docs: int) -> list[Path]:
    """English text with no download: the docstrings of the standard library, one ``.txt`` document per module."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(m for m in sys.stdlib_module_names if not m.startswith("_"))
    files = []
    for name in names:
        if len(files) >= max_docs:
            break
        try:
            text = pydoc.render_doc(name, renderer=pydoc.plaintext)
        except Exception:  # modules that do not import here (curses, tkinter, ...)
            continue
        if len(text) > 2000:
            path = folder / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            files.append(path)
    return files


def train_args(args: argparse.Namespace, corpus: list[Path], out: Path) -> list[str]:
    files = "[" + ",".join(str(p) for p in corpus) + "]"
    common = ["data=files", "data.sources=[]", f"data.files={files}", "logger=csv", "trainer=ddp",
              f"out_dir={out}", "trainer.progress_bar=false", "trainer.val_every_steps=50", "trainer.val_batches=8",
              "trainer.log_every_steps=1", "optim.warmup_fraction=0.05"]
    if args.smoke:
        return [*common, "trainer.accelerator=cpu", "trainer.devices=2", "model=tiny", "layer=peer_small",
                "layer.n_experts=1024", "layer.d_key=16", "data.seq_len=32", "data.batch_size=4",
                "tokenizer.vocab_size=512", "budget=6e9", "min_steps=5"]
    return [*common, "trainer.accelerator=gpu", "trainer.devices=-1", "model=d4", "layer=peer_small",
            "data.seq_len=256", "data.batch_size=16", "tokenizer.vocab_size=4096", f"budget={args.ddp_budget}"]


def read_curve(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def ddp_check(args: argparse.Namespace, out: Path, report: dict) -> None:
    corpus = stdlib_corpus(out / "corpus", 40 if args.smoke else 400)
    base = train_args(args, corpus, out / "runs")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    runs = {}
    for precision in ("bf16-mixed", "32-true"):
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *base, f"trainer.precision={precision}",
                               f"run_name={precision}"], env=env, capture_output=True, text=True, timeout=args.timeout)
        (out / f"ddp-{precision}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"DDP run {precision} failed (exit {proc.returncode}); see ddp-{precision}.log:\n"
                               + proc.stderr[-2000:])
        results = json.loads((out / "runs" / precision / "results.json").read_text())
        runs[precision] = {"wall_s": time.time() - t0, "steps": results["steps"], "world_size": results["world_size"],
                           "final_val_loss": results["final_val_loss"], "tokens_per_s": results["train_tokens_per_s"],
                           "expert_grads": results.get("expert_grads"), "curve": read_curve(out / "runs" / precision)}
        print(f"  ddp {precision:10s}: {results['steps']} steps on {results['world_size']} process(es), final val "
              f"loss {results['final_val_loss']:.4f}, {results['train_tokens_per_s']:.0f} tok/s, expert tables: "
              f"{results.get('expert_grads')}", flush=True)
    a, b = runs["bf16-mixed"]["curve"], runs["32-true"]["curve"]
    steps = sorted(set(a) & set(b))
    window = max(1, len(steps) // 10)
    smooth = lambda c, i: sum(c[s] for s in steps[max(0, i - window + 1) : i + 1]) / len(steps[max(0, i - window + 1) : i + 1])  # noqa: E731
    gaps = [abs(smooth(a, i) - smooth(b, i)) for i in range(len(steps))]
    forced = subprocess.run([sys.executable, str(ROOT / "train.py"), *base, "layer.sparse_grads=true",
                             "run_name=forced-sparse"], env=env, capture_output=True, text=True, timeout=args.timeout)
    error_lines = [ln for ln in forced.stderr.splitlines() if ln.startswith("error: ")]
    if forced.returncode == 0:
        error_lines = ["(trained: this backend reduces sparse gradients)"]
    report["ddp"] = {
        "backend": "gloo" if args.smoke else "nccl",
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in runs.items()},
        "compared_steps": len(steps), "smoothing_window": window,
        "max_abs_gap_smoothed_train_loss": max(gaps) if gaps else None,
        "final_val_loss_gap": runs["bf16-mixed"]["final_val_loss"] - runs["32-true"]["final_val_loss"],
        "forced_sparse": {"exit": forced.returncode, "error": error_lines[0] if error_lines else forced.stderr[-500:]},
    }
    print(f"  bf16 vs fp32: max |gap| of {window}-step mean train loss {report['ddp']['max_abs_gap_smoothed_train_loss']:.4f}"
          f", final val loss gap {report['ddp']['final_val_loss_gap']:+.4f}; sparse_grads=true: exit {forced.returncode}, "
          f"{report['ddp']['forced_sparse']['error'][:160]}", flush=True)


# ------------------------------------------------------------------------------------------- 2. throughput
def lm_configs(smoke: bool) -> list[tuple[str, dict]]:
    """(label, spec): width, depth, the middle block's layer and its settings."""
    if smoke:
        widths, big, small, experts = [("w64", 64, 2), ("w96", 96, 2)], 32, 16, 8
    else:
        widths, big, small, experts = [("d12", 768, 12), ("d16", 1024, 16)], 1024, 128, 128
    layers = {
        "dense": None,
        "moe": {"_target_": "peerlab.mixers.moe.MoE", "n_experts": experts, "routing": "expert_choice"},
        f"pkm-{big}^2": {"_target_": "peerlab.mixers.pkm.PKM", "n_memories": big * big, "heads": 8, "k": 32,
                         "d_key": 128 if not smoke else 16},
        f"peer-{small}^2": {"_target_": "peerlab.mixers.peer.PEER", "n_experts": small * small, "heads": 8, "k": 16,
                            "d_key": 128 if not smoke else 16},
        f"peer-{big}^2": {"_target_": "peerlab.mixers.peer.PEER", "n_experts": big * big, "heads": 8, "k": 16,
                          "d_key": 128 if not smoke else 16},
    }
    return [(f"{w}/{name}", {"width": w, "d_model": d, "depth": depth, "layer": layer})
            for w, d, depth in widths for name, layer in layers.items()]


def build_lm(spec: dict, vocab: int, seq_len: int):
    from peerlab.builders import build_model

    model_cfg = {"name": spec["width"], "depth": spec["depth"], "aspect_ratio": 64, "head_dim": 64,
                 "d_model": spec["d_model"], "ffw_mult": 4.0, "activation": "gelu", "sparse_blocks": "middle"}
    layer = spec["layer"] or {"_target_": "peerlab.mixers.ffw.FeedForward", "hidden_mult": 4.0}
    return build_model(model_cfg, layer, vocab, seq_len)


def time_steps(args: argparse.Namespace, report: dict) -> None:
    from benchmarks.cases import train_step
    from peerlab.flops import flops_breakdown

    device = "cpu" if args.smoke else "cuda"
    vocab, seq, batch = (512, 64, 2) if args.smoke else (50257, 2048, args.batch)
    rows = []
    for label, spec in lm_configs(args.smoke):
        torch.manual_seed(0)
        try:
            model = build_lm(spec, vocab, seq).to(device).train()
            tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)
            step = train_step(model, tokens)
            with torch.autocast(device, dtype=torch.bfloat16):
                seconds = seconds_per_step(step, args, device)
        except torch.OutOfMemoryError as exc:
            print(f"  {label}: out of memory ({str(exc).splitlines()[0]})", flush=True)
            rows.append({"config": label, "error": "out of memory"})
            continue
        flops = flops_breakdown(model)
        tok_s = batch * seq / seconds
        row = {"config": label, "width": spec["width"], "d_model": spec["d_model"], "layer": label.split("/")[1],
               "step_ms": seconds * 1e3,
               "tokens_per_s": tok_s, "train_flops_per_token": flops.train, "params": model.num_params(),
               "mfu": tok_s * flops.train / args.peak_flops,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
        rows.append(row)
        print(f"  {label:18s} step {row['step_ms']:8.1f} ms  {tok_s:9.0f} tok/s  MFU {row['mfu']:.3f}  "
              f"{flops.train / 1e9:.2f} GFLOP/token", flush=True)
        del model, step
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    report["steps"] = {"device": device, "vocab": vocab, "seq_len": seq, "batch_per_gpu": batch,
                       "precision": "bf16 autocast", "peak_flops": args.peak_flops, "rows": rows}


def hygiene(args: argparse.Namespace, report: dict) -> None:
    """What the CUDA defaults training now takes change: float32 matmul precision (highest against TF32 "high", in
    fp32 steps, where it applies) and fused AdamW for the dense groups (against the foreach kernels), on the first
    LM of the step timings. The NaN guard is read at logging steps only, so it is in none of these steps."""
    from benchmarks.cases import train_step

    device = "cpu" if args.smoke else "cuda"
    vocab, seq, batch = (512, 64, 2) if args.smoke else (50257, 2048, max(1, args.batch // 2))
    label, spec = lm_configs(args.smoke)[0]
    before = torch.get_float32_matmul_precision()
    rows = []
    try:
        for precision in ("highest", "high"):
            for fused in (False, True):
                torch.set_float32_matmul_precision(precision)
                torch.manual_seed(0)
                model = build_lm(spec, vocab, seq).to(device).train()
                tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)
                ms = seconds_per_step(train_step(model, tokens, fused=fused), args, device) * 1e3
                rows.append({"matmul_precision": precision, "fused_adamw": fused, "step_ms": ms,
                             "tokens_per_s": batch * seq / (ms / 1e3)})
                print(f"  {label} fp32, matmul {precision:7s}, fused AdamW {fused!s:5s}: step {ms:8.1f} ms", flush=True)
                del model
    finally:
        torch.set_float32_matmul_precision(before)
    report["hygiene"] = {"config": label, "device": device, "seq_len": seq, "batch": batch, "precision": "fp32",
                         "rows": rows}


def seconds_per_step(step, args: argparse.Namespace, device: str) -> float:
    """Mean wall time of ``args.steps`` calls after ``args.warmup`` untimed ones, the device synchronised."""
    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / args.steps


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- 3. grid cost
LAYER_KIND = {"ffw": "dense", "moe": "moe", "pkm": "pkm", "peer": "peer"}


def grid_cost(args: argparse.Namespace, report: dict) -> None:
    """GPU-hours = budget / (MFU x peak) for every point of isoflop_paper.yaml, with the MFU measured for the same
    layer kind at the nearest measured width (linear DDP scaling assumed: 8 GPUs take an eighth of the time)."""
    from omegaconf import OmegaConf

    from peerlab.builders import build_model
    from peerlab.flops import flops_breakdown
    from peerlab.sizes import load_layer

    sweep = OmegaConf.load(ROOT / "experiments" / "isoflop_paper.yaml")
    params = sweep.hydra.sweeper.params
    budgets = [float(b) for b in str(params.budget).split(",")]
    models, layers = str(params.model).split(","), str(params.layer).split(",")
    measured = [r for r in report["steps"]["rows"] if "mfu" in r]
    seq = report["steps"]["seq_len"] if args.smoke else 2048
    rows = []
    for model_name in models:
        model_cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{model_name}.yaml")
        d_model = model_cfg.d_model or model_cfg.depth * model_cfg.aspect_ratio
        for layer_name in layers:
            layer_cfg = load_layer(layer_name)
            with torch.device("meta"):
                flops = flops_breakdown(build_model(model_cfg, layer_cfg, 50257, seq)).train
            kind = LAYER_KIND[layer_name]
            same_kind = [r for r in measured if r["layer"].split("-")[0] == kind and
                         (kind != "peer" or r["layer"].endswith(f"{1024 if not args.smoke else 32}^2"))]
            if not same_kind:
                continue
            ref = min(same_kind, key=lambda r: abs(math.log(r["d_model"] / d_model)))
            for budget in budgets:
                hours = budget / (ref["mfu"] * args.peak_flops) / 3600
                rows.append({"budget": budget, "model": model_name, "layer": layer_name, "train_flops_per_token": flops,
                             "tokens": budget / flops, "mfu_from": ref["config"], "mfu": ref["mfu"],
                             "gpu_hours": hours, "hours_on_8_gpus": hours / 8})
    report["grid_cost"] = {"sweep": "experiments/isoflop_paper.yaml", "rows": rows,
                           "total_gpu_hours": sum(r["gpu_hours"] for r in rows)}
    print(f"  isoflop_paper.yaml: {len(rows)} points, {report['grid_cost']['total_gpu_hours']:.1f} GPU-hours in all",
          flush=True)


# ------------------------------------------------------------------------------------------- 4. planner
def planner_check(args: argparse.Namespace, report: dict) -> None:
    """Measured peak of a real training step beside the planner's, at the largest grid point that fits."""
    from peerlab.builders import build_model
    from peerlab.parallel.memory import Execution, estimate
    from peerlab.sizes import load_layer
    from peerlab.sweeps.expand import compose_point, grid

    device = "cpu" if args.smoke else "cuda"
    sweep_dir = ROOT / "experiments"
    from omegaconf import OmegaConf

    from peerlab.parallel.micro_batch import is_auto, with_micro_batch

    points = [compose_point(sweep_dir, "isoflop_paper", o) for o in grid(sweep_dir, "isoflop_paper", [])]
    # one GPU, the whole model: the grid's fixed alternative (4 x 4, its header) stands for data.batch_size=auto
    points = [with_micro_batch(p, 4, 4) if is_auto(p) else p for p in points]

    if args.smoke:  # the same code at toy sizes
        points = [OmegaConf.merge(p, {"model": {"depth": 2, "d_model": 64, "aspect_ratio": 32, "head_dim": 32},
                                      "data": {"seq_len": 64}}) for p in points[:4]]
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 4 * 2**30
    vocab = 512 if args.smoke else 50257
    candidates = []
    smoke_sizes = {"ffw": {}, "moe": {"n_experts": 8}, "pkm": {"n_memories": 32**2, "d_key": 16},
                   "peer": {"n_experts": 32**2, "d_key": 16}}
    for cfg in points:
        layer = OmegaConf.merge(load_layer(cfg.layer.name), smoke_sizes[cfg.layer.name]) if args.smoke else cfg.layer
        ex = Execution(device_type=device, precision="bf16-mixed", strategy="single", micro_batch=int(cfg.data.batch_size),
                       seq_len=int(cfg.data.seq_len), accumulate=int(cfg.trainer.accumulate_grad_batches),
                       loss_chunk_tokens=int(cfg.trainer.loss_chunk_tokens))
        with torch.device("meta"):
            meta = build_model(cfg.model, layer, vocab, ex.seq_len)
        for m in meta.mixers:
            m.prepare_for_backend(group=(None, 1))
        est = estimate(meta, ex)
        if est.peak <= 0.9 * total:
            candidates.append((meta.num_params(), cfg, layer, ex, est))
    if not candidates:
        print("  no grid point fits one GPU", flush=True)
        return
    params, cfg, layer, ex, est = max(candidates, key=lambda c: c[0])
    torch.manual_seed(0)
    model = build_model(cfg.model, layer, vocab, ex.seq_len).to(device).train()
    model.loss_chunk_tokens = ex.loss_chunk_tokens
    from peerlab.optim import LazyAdamW, clip_grad_norm

    opt = LazyAdamW(list(model.parameters()), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        for _ in range(ex.accumulate):
            tokens = torch.randint(0, vocab, (ex.micro_batch, ex.seq_len + 1), generator=gen).to(device)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model.loss(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from here on, as in every step after the first
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        step_s = time.perf_counter() - t0
        measured = torch.cuda.max_memory_allocated()
    else:
        from peerlab.memory_probe import allocation_peak, held_bytes

        t0 = time.perf_counter()
        measured = held_bytes(model, opt) + allocation_peak(step)
        step_s = time.perf_counter() - t0
    estimated = estimated_step_s(meta_of(cfg, layer, vocab, ex), ex, device)
    point = f"{cfg.model.name}/{cfg.layer.name}"
    report["planner"] = {"point": point, "params": params, "micro_batch": ex.micro_batch, "accumulate": ex.accumulate,
                         "planned_gib": est.peak / 2**30, "measured_gib": measured / 2**30,
                         "planned_phase": est.phase, "ratio": est.peak / measured,
                         "device_gib": total / 2**30, "step_s": step_s, "estimated_step_s": estimated}
    print(f"  {point} ({params / 1e9:.2f}B parameters, micro-batch {ex.micro_batch} x {ex.accumulate}): planned "
          f"{est.peak / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB ({est.peak / measured:.2f}x); step "
          f"{step_s:.3g} s measured" + (", {:.3g}-{:.3g} s estimated".format(*estimated) if estimated else
                                        " (no time model for this device)"), flush=True)


def meta_of(cfg, layer, vocab: int, ex):
    from peerlab.builders import build_model

    with torch.device("meta"):
        return build_model(cfg.model, layer, vocab, ex.seq_len)


def card() -> str | None:
    """The ``--gpu`` name of the visible GPU (peerlab.parallel.step_time), or None for a card it does not know."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().upper()
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if "H200" in name:
        return "h200"
    if "H100" in name:
        return "h100"
    if "A100" in name:
        return "a100-80" if gib > 50 else "a100-40"
    return None


def estimated_step_s(meta, ex, device: str) -> list[float] | None:
    """The time model's (fastest, slowest) step on this GPU, for one process; None off a known card."""
    from peerlab.flops import flops_breakdown
    from peerlab.parallel.step_time import GPUS, step_time

    kind = card() if device == "cuda" else None
    if kind is None:
        return None
    return list(step_time(meta, ex, flops_breakdown(meta).train, GPUS[kind]).step_s)


# ------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"# The paper's grid on {env['gpu']}", "",
             f"{env['date']}, torch {env['torch']}, {env['gpus']} visible GPU(s). Made by `python -m benchmarks.gpu_scale`.", ""]
    if "ddp" in report:
        d = report["ddp"]
        lines += [f"## DDP ({d['backend']}) through Lightning, bf16-mixed against fp32", "",
                  "| precision | processes | steps | final val loss | tok/s | expert tables |", "|---|---|---|---|---|---|"]
        for name, r in d["runs"].items():
            lines.append(f"| {name} | {r['world_size']} | {r['steps']} | {r['final_val_loss']:.4f} | "
                         f"{r['tokens_per_s']:.0f} | {r['expert_grads']} |")
        lines += ["", f"Largest gap between the two {d['smoothing_window']}-step mean training-loss curves: "
                  f"{d['max_abs_gap_smoothed_train_loss']:.4f} nats over {d['compared_steps']} steps; final validation "
                  f"loss gap (bf16 - fp32): {d['final_val_loss_gap']:+.4f}.", "",
                  f"`layer.sparse_grads=true` under this backend: exit {d['forced_sparse']['exit']}, "
                  f"`{d['forced_sparse']['error']}`", ""]
    s = report["steps"]
    lines += [f"## Training steps, {s['precision']}, seq {s['seq_len']}, batch {s['batch_per_gpu']} per GPU, vocab {s['vocab']}",
              "", f"MFU against {s['peak_flops'] / 1e12:.3g} TFLOP/s.", "",
              "| config | step ms | tokens/s | train GFLOP/token | MFU |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        if "mfu" in r:
            lines.append(f"| {r['config']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{r['train_flops_per_token'] / 1e9:.3f} | {r['mfu']:.3f} |")
        else:
            lines.append(f"| {r['config']} | {r['error']} | | | |")
    if "hygiene" in report:
        h = report["hygiene"]
        base = h["rows"][0]["step_ms"]
        lines += ["", f"## CUDA defaults: TF32 matmuls and fused AdamW ({h['config']}, {h['precision']}, seq {h['seq_len']}, "
                  f"batch {h['batch']})", "", "| float32 matmuls | fused AdamW | step ms | vs highest, foreach |",
                  "|---|---|---|---|"]
        for r in h["rows"]:
            lines.append(f"| {r['matmul_precision']} | {r['fused_adamw']} | {r['step_ms']:.1f} | {base / r['step_ms']:.2f}x |")
    if "planner" in report:
        p = report["planner"]
        lines += ["", "## The memory planner against this GPU", "",
                  f"{p['point']} ({p['params'] / 1e9:.2f}B parameters), the largest grid point whose one-GPU plan fits, "
                  f"micro-batch {p['micro_batch']} x {p['accumulate']}, bf16 autocast: planned {p['planned_gib']:.2f} GiB "
                  f"(peak at {p['planned_phase']}), measured {p['measured_gib']:.2f} GiB "
                  f"(`torch.cuda.max_memory_allocated`), planned / measured {p['ratio']:.2f}. One optimizer step took "
                  f"{p['step_s']:.3g} s; the time model (`python -m peerlab.plan --gpu`) estimated "
                  + ("{:.3g}-{:.3g} s.".format(*p["estimated_step_s"]) if p.get("estimated_step_s")
                     else "nothing: it has no figures for this card."), ""]
    g = report["grid_cost"]
    lines += ["", f"## What `{g['sweep']}` costs at these rates", "",
              "| budget | model | layer | tokens | MFU (from) | GPU-hours | hours on 8 GPUs |", "|---|---|---|---|---|---|---|"]
    for r in g["rows"]:
        lines.append(f"| {r['budget']:.0e} | {r['model']} | {r['layer']} | {r['tokens']:.3g} | {r['mfu']:.3f} "
                     f"({r['mfu_from']}) | {r['gpu_hours']:.1f} | {r['hours_on_8_gpus']:.2f} |")
    lines += ["", f"Total: {g['total_gpu_hours']:.0f} GPU-hours (linear DDP scaling assumed).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu")
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes: the same code paths in about a minute")
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--ddp-budget", type=float, default=4e13, help="FLOPs of each DDP run (d4: ~300 steps on 1 GPU)")
    ap.add_argument("--batch", type=int, default=16, help="sequences of 2048 tokens per GPU in the step timings")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (default: H100/H200's 989)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds for each DDP run")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; use --smoke for the CPU check", file=sys.stderr)
        return 2
    args.peak_flops = (args.peak_tflops or (0.05 if args.smoke else H200_BF16_PEAK / 1e12)) * 1e12
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"env": {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "python": platform.python_version(),
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)",
                      "gpus": torch.cuda.device_count()}, "smoke": args.smoke}
    t0 = time.time()
    if not args.skip_ddp:
        print("1. DDP through Lightning, bf16-mixed and fp32", flush=True)
        ddp_check(args, args.out, report)
    print("2. training steps", flush=True)
    time_steps(args, report)
    print("2b. TF32 matmuls and fused AdamW", flush=True)
    hygiene(args, report)
    print("3. cost of isoflop_paper.yaml", flush=True)
    grid_cost(args, report)
    print("4. the memory planner against a real step", flush=True)
    planner_check(args, report)
    report["wall_s"] = time.time() - t0
    (args.out / "gpu_scale.json").write_text(json.dumps(report, indent=2))
    (args.out / "SCALE.md").write_text(markdown(report))
    print(f"wrote {args.out / 'gpu_scale.json'} and SCALE.md in {report['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
