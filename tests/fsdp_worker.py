"""One rank of a 2-process gloo job (tests/test_fsdp.py): every mixer trained a few steps under FSDP (peerlab.parallel.fsdp's
units, LazyAdamW, peerlab's clipping on DTensor gradients) and under DDP from the same weights on the same halves of
each batch; rank 0 also trains one process on the whole batches. Writes per-step losses, weights and bytes."""

from __future__ import annotations

import copy
import gc
import sys

import torch
import torch.distributed as dist

from peerlab.builders import build_model
from peerlab.optim import LazyAdamW, clip_grad_norm
from peerlab.parallel.fsdp import shard_model
from peerlab.sizes import load_layer

LAYERS = {  # tiny sizes of every mixer; dense tables (FSDP reduces dense gradients only)
    "ffw": {}, "moe": {"n_experts": 4}, "moe_tc": {"n_experts": 4}, "moe_fine": {},
    "pkm": {"n_memories": 16**2, "d_key": 8, "k": 8}, "peer": {"n_experts": 16**2, "d_key": 8, "sparse_grads": False},
    "memory_plus": {},
}
MODEL = {"name": "w", "depth": 2, "aspect_ratio": 16, "head_dim": 16, "d_model": 32, "ffw_mult": 4.0,
         "activation": "gelu", "sparse_blocks": "middle"}
VOCAB, SEQ, BATCH, STEPS = 64, 16, 4, 4


def build(layer: str, extra: dict | None = None):
    cfg = load_layer(layer)
    cfg.update({**LAYERS[layer], **(extra or {})})
    torch.manual_seed(0)
    return build_model(MODEL, cfg, VOCAB, SEQ)


def batches():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen) for _ in range(STEPS)]


def train(model, data, rank: int, world: int, wrapped=None) -> list[float]:
    """Steps of the mean next-token loss; ``world`` > 1: this rank's half of each batch, the loss averaged."""
    opt = LazyAdamW(list(model.parameters()), lr=1e-2, weight_decay=0.1)
    losses = []
    for block in data:
        part = block.chunk(world)[rank] if world > 1 else block
        x, y = part[:, :-1], part[:, 1:]
        loss = wrapped(x, y) if wrapped else model.loss(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
    return losses, opt


def local_bytes(model, opt) -> tuple[int, int]:
    """This rank's bytes of weights and of AdamW's moments (a DTensor counts its local shard)."""
    def size(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = sum(size(p) for p in model.parameters())
    moments = sum(size(s[k]) for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    return params, moments


def full_weights(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}


def main(rank: int, world: int, store: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    data = batches()
    result = {}
    runs = [(layer, {}) for layer in LAYERS] + [("peer", {"query_norm": "layer"}), ("pkm", {"query_norm": "layer"})]
    for layer, extra in runs:
        name = layer + ("-layernorm" if extra else "")
        base = build(layer, extra)
        ddp_model = copy.deepcopy(base)
        for m in ddp_model.mixers:
            m.prepare_for_backend(group=("gloo", world))
        ddp = DistributedDataParallel(ddp_model)
        ddp_losses, _ = train(ddp_model, data, rank, world, wrapped=ddp)
        del ddp  # its reducer must go before the process group does (else, at exit: "terminate called", SIGABRT)
        fsdp_model = copy.deepcopy(base)
        for m in fsdp_model.mixers:
            m.prepare_for_backend(sharded=True, group=("gloo", world))
        shard_model(fsdp_model, mesh)
        fsdp_losses, fsdp_opt = train(fsdp_model, data, rank, world)
        entry = {"ddp": ddp_losses, "fsdp": fsdp_losses, "fsdp_weights": full_weights(fsdp_model),
                 "start_weights": full_weights(base),
                 "ddp_weights": full_weights(ddp_model), "bytes": local_bytes(fsdp_model, fsdp_opt)}
        if rank == 0:
            single = copy.deepcopy(base)
            entry["single"], single_opt = train(single, data, 0, 1)
            entry["single_weights"] = full_weights(single)
            entry["single_bytes"] = local_bytes(single, single_opt)
        if name == "peer":  # checkpointed blocks and the chunked loss, sharded: the same steps
            variant = copy.deepcopy(base)
            for m in variant.mixers:
                m.prepare_for_backend(sharded=True, group=("gloo", world))
            variant.set_activation_checkpointing(True)
            variant.loss_chunk_tokens = 5
            shard_model(variant, mesh)
            entry["fsdp_ckpt_chunked"], _ = train(variant, data, rank, world)
        result[name] = entry
    torch.save(result, out)
    gc.collect()
    dist.barrier()  # both ranks done with every collective before either tears the group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
