"""One rank of a gloo job (tests/test_memory_parallel.py): each sparse layer trained 20 steps under FSDP with its
tables whole (``trainer.memory_parallel=1``) and split by columns over groups of M ranks, from the same weights on
the same share of each batch, in each dtype asked for. Writes per-step losses, step-1 gradients, usage, per-rank
table bytes and the bytes that passed through the process group in one step, by collective."""

from __future__ import annotations

import copy
import gc
import inspect
import sys
from collections import defaultdict

import torch
import torch.distributed as dist

from peerlab.builders import build_model
from peerlab.optim import LazyAdamW, clip_grad_norm
from peerlab.parallel.fsdp import shard_model
from peerlab.parallel.memory_parallel import build_mesh, reduce_table_grads, shard_tables
from peerlab.sizes import load_layer

LAYERS = {  # tiny sizes; tables of 256 rows
    "peer": {"n_experts": 16**2, "d_key": 8, "heads": 2, "k": 4},
    "peer_linear": {"n_experts": 16**2, "d_key": 8, "heads": 2, "k": 4},
    "pkm": {"n_memories": 16**2, "d_key": 8, "k": 8},
    "memory_plus": {"n_memories": 16**2, "d_key": 8, "k": 8},
}
MODEL = {"name": "w", "depth": 2, "aspect_ratio": 16, "head_dim": 16, "d_model": 32, "ffw_mult": 4.0,
         "activation": "gelu", "sparse_blocks": "middle"}
VOCAB, SEQ, BATCH, STEPS = 64, 16, 8, 20


class ByteCounter:
    """Bytes this rank sends through each collective (the ring algorithms' count, from the tensors passed): every
    call of the torch.distributed functions that FSDP2 and peerlab's memory-parallel layers use."""

    SENT = {  # bytes sent by one rank of m, from the output and input tensors' sizes
        "all_gather_single": lambda out, inp, m: inp * (m - 1),
        "reduce_scatter_single": lambda out, inp, m: out * (m - 1),
        "all_reduce": lambda out, inp, m: 2 * (m - 1) / m * out,
        "all_to_all_single": lambda out, inp, m: inp * (m - 1) / m,
    }

    def __init__(self) -> None:
        self.sent: dict[str, float] = defaultdict(float)
        self.on = False
        for name in self.SENT:
            setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name, real):
        signature = inspect.signature(real)

        def counted(*args, **kwargs):
            if self.on:
                bound = signature.bind(*args, **kwargs)
                tensors = [v for v in bound.arguments.values() if isinstance(v, torch.Tensor)]
                out, inp = tensors[0], tensors[-1]
                m = dist.get_world_size(bound.arguments.get("group"))
                self.sent[name] += self.SENT[name](out.numel() * out.element_size(), inp.numel() * inp.element_size(), m)
            return real(*args, **kwargs)

        return counted


def build(layer: str):
    cfg = load_layer(layer)
    cfg.update(LAYERS[layer])
    torch.manual_seed(0)
    return build_model(MODEL, cfg, VOCAB, SEQ)


def batches():
    """Sequences t_{i+1} = 5 t_i + 3 mod VOCAB from random starts: learnable, so the loss falls in 20 steps."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(STEPS):
        seq = [torch.randint(0, VOCAB, (BATCH,), generator=gen)]
        for _ in range(SEQ):
            seq.append((5 * seq[-1] + 3) % VOCAB)
        out.append(torch.stack(seq, dim=1))
    return out


def whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def train(model, data, rank: int, world: int, tables, mesh, counter: ByteCounter):
    opt = LazyAdamW(list(model.parameters()), lr=1e-2, weight_decay=0.1)
    losses, grads = [], None
    for step, block in enumerate(data):
        part = block.chunk(world)[rank]
        counter.on = step == 1
        loss = model.loss(part[:, :-1], part[:, 1:])
        loss.backward()
        if tables:
            reduce_table_grads(tables, mesh, world)
        counter.on = False
        if step == 0:
            grads = {name: whole(p.grad) for name, p in model.named_parameters() if p.grad is not None}
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append((mean / world).item())
    return losses, grads


def usage(model, data, rank: int, world: int) -> dict[str, float]:
    model.eval()
    for m in model.mixers:
        m.reset_usage()
    with torch.no_grad():
        for block in data[:4]:
            part = block.chunk(world)[rank]
            model(part[:, :-1])
    for m in model.mixers:
        for t in m.usage_tensors():
            dist.all_reduce(t.to_local() if hasattr(t, "to_local") else t)
    model.train()
    return {f"{i}/{k}": v for i, m in enumerate(model.mixers) for k, v in m.usage_stats().items()}


def table_bytes(model) -> int:
    """This rank's bytes of the expert tables as the layer computes with them (FSDP gathers whole tables)."""
    total = 0
    for m in model.mixers:
        for p in m.expert_tables().values():
            local = p.to_local() if m.tables_group is not None else p
            shape = local.shape if m.tables_group is not None else p.shape  # FSDP gathers the whole table
            total += torch.Size(shape).numel() * p.element_size()
    return total


def main(rank: int, world: int, store: str, out: str, m: int, dtypes: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    fsdp_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    tables_mesh = build_mesh(world, m, "cpu")
    counter = ByteCounter()
    data = batches()
    result = {}
    for dtype, layer in ((dtype, layer) for dtype in dtypes.split(",") for layer in LAYERS):
        torch.set_default_dtype(getattr(torch, dtype))
        base = build(layer)
        entry = {}
        for split in (1, m):
            model = copy.deepcopy(base)
            for mixer in model.mixers:
                mixer.prepare_for_backend(sharded=True, group=("gloo", world))
            tables = shard_tables(model, tables_mesh) if split > 1 else []
            shard_model(model, fsdp_mesh, ignored=set(tables))
            counter.sent.clear()
            losses, grads = train(model, data, rank, world, tables, tables_mesh, counter)
            entry[split] = {"batch": BATCH // world, "seq": SEQ, "losses": losses, "grads": grads, "usage": usage(model, data, rank, world),
                            "table_bytes": table_bytes(model), "sent": dict(counter.sent),
                            "weights": {k: whole(v) for k, v in model.state_dict().items()}}
        if layer == "peer":  # checkpointed blocks (their collectives run again in backward) and the chunked loss
            model = copy.deepcopy(base)
            for mixer in model.mixers:
                mixer.prepare_for_backend(sharded=True, group=("gloo", world))
            model.set_activation_checkpointing(True)
            model.loss_chunk_tokens = 5
            tables = shard_tables(model, tables_mesh)
            shard_model(model, fsdp_mesh, ignored=set(tables))
            entry["checkpointed"], _ = train(model, data, rank, world, tables, tables_mesh, counter)
        result[dtype, layer] = entry
    torch.save(result, out)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
