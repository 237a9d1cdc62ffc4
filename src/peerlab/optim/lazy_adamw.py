"""AdamW that updates only the rows present in a sparse gradient.

Dense gradients get torch's own AdamW (decoupled weight decay): its fused kernel when every dense parameter of a
group is on a CUDA device (``fused=None``, the default; one launch per group instead of several per tensor), its
foreach kernels elsewhere; ``fused=True``/``False`` forces either. A sparse COO gradient (PEER's
expert tables with ``layer.sparse_grads``) updates just its rows: their two moments, their weight decay and their
parameter step, so the cost follows the rows a batch used, not the table's N rows. Rows not retrieved in a step
keep their moments and weights unchanged ("lazy" Adam, as ``torch.optim.SparseAdam`` and TF's LazyAdam); bias
correction uses the optimizer step, shared by all rows. Dense AdamW would instead keep moving unused rows along
their stale momentum; with every row in the gradient both give the same update.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam


class LazyAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, fused: bool | None = None) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LazyAdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        # "fused" in the groups also tells torch's load_state_dict to keep a fused group's step counts on its device.
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "fused": fused})
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            dense = {"params": [], "grads": [], "exp_avgs": [], "exp_avg_sqs": [], "steps": []}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                if p.grad.is_sparse:
                    state["step"] += 1
                    self._lazy_update(p, p.grad, state, group)
                    continue
                for key, value in (("params", p), ("grads", p.grad), ("exp_avgs", state["exp_avg"]),
                                   ("exp_avg_sqs", state["exp_avg_sq"]), ("steps", state["step"])):
                    dense[key].append(value)
            if dense["params"]:
                fused = use_fused(dense["params"], group.get("fused"))
                if fused:  # the fused kernel reads its step counts on the parameters' device
                    for p, step in zip(dense["params"], dense["steps"], strict=True):
                        if step.device != p.device:
                            self.state[p]["step"] = step = step.to(p.device, torch.float32)
                    dense["steps"] = [self.state[p]["step"] for p in dense["params"]]
                adam(dense["params"], dense["grads"], dense["exp_avgs"], dense["exp_avg_sqs"], [], dense["steps"],
                     fused=fused or None, decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
                     lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
        return loss

    def _scratch(self, like: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two reused (rows, d) buffers: gathered rows written into fresh allocations page-fault every step, which
        cost more than the update itself for large tables."""
        key = (like.shape[1], like.dtype, like.device)
        pair = self._buffers.get(key)
        if pair is None or pair[0].shape[0] < rows:
            pair = tuple(like.new_empty(rows, like.shape[1]) for _ in range(2))
            self._buffers[key] = pair
        return pair[0][:rows], pair[1][:rows]

    def _lazy_update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        grad = coalesced(grad)
        rows, values = grad._indices()[0], grad._values()
        if rows.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        step = state["step"].item()
        m, v = self._scratch(p, rows.numel())
        torch.index_select(state["exp_avg"], 0, rows, out=m)
        torch.index_select(state["exp_avg_sq"], 0, rows, out=v)
        m.lerp_(values, 1 - beta1)
        v.mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        delta = m.div_(v.div_(bias2).sqrt_().add_(eps)).mul_(-lr / bias1)  # AdamW's step for these rows
        if wd:
            delta.add_(p.index_select(0, rows), alpha=-lr * wd)  # decoupled weight decay of the same rows
        p.index_add_(0, rows, delta)


def use_fused(params: list[torch.Tensor], setting: bool | None) -> bool:
    """Whether a group's dense parameters take torch's fused AdamW kernel: ``setting`` when given, else exactly when
    all of them live on CUDA devices."""
    if setting is not None:
        return setting
    return bool(params) and all(p.device.type == "cuda" for p in params)


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` with unique sorted rows. PEER's table gradients are built that way but lose the flag on their way
    into ``.grad``; checking that the rows strictly increase costs O(rows) where ``coalesce()`` sorts them."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return grad._coalesced_(True)
    return grad.coalesce()
