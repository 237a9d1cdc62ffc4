"""Single-process stand-ins for multi-rank logic, so the fast suite catches what the 2-process tests in
``make test-slow`` catch: the cross-rank sum of validation, rank 0's minutes-based checkpoint decision, and a
Ctrl-C's exit and saved step. A fake 2-rank process group (``torch.testing._internal.distributed.fake_pg``) makes
``torch.distributed`` report two ranks; its collectives are replaced by what the other rank would contribute."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist


@pytest.fixture
def two_ranks():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_validation_totals_and_usage_are_summed_over_ranks(two_ranks, monkeypatch):
    from peerlab.lit_module import LanguageModel

    model = {"name": "t", "depth": 1, "aspect_ratio": 32, "head_dim": 16, "d_model": 32, "ffw_mult": 2.0,
             "activation": "gelu", "sparse_blocks": "all"}
    layer = {"_target_": "peerlab.mixers.pkm.PKM", "name": "pkm", "n_memories": 64, "heads": 1, "k": 4,
             "d_key": 8}
    module = LanguageModel(model=model, layer=layer, optim={"lr": 1e-3}, vocab_size=64, seq_len=8, tokens_per_step=8,
                           budget=1e9, max_steps=10)
    module.model.eval()
    for mixer in module.model.mixers:
        mixer.reset_usage()
    with torch.no_grad():
        module.model(torch.randint(0, 64, (2, 8)))  # a validation batch: the accumulators exist and count
    usage = [t for m in module.model.mixers for t in m.usage_tensors()]
    assert usage, "the layer has usage accumulators to sum"
    for t in usage:
        t.fill_(1)
    seen = []

    def other_rank_adds(tensor, *args, **kwargs):  # rank 1 scored 5 tokens with loss sum 2.5, and counted usage 2
        seen.append(tensor)
        tensor.add_(torch.tensor([2.5, 5.0], dtype=tensor.dtype) if len(seen) == 1 else 2)  # the totals come first

    monkeypatch.setattr(dist, "all_reduce", other_rank_adds)
    totals = module.sum_over_ranks(1.5, 3)
    assert totals.tolist() == [4.0, 8.0]
    assert all(bool((t == 3).all()) for t in usage) and len(seen) == 1 + len(usage)


def trainer_at(step_due_here: bool):
    return SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")), due=step_due_here)


@pytest.mark.parametrize("here,rank0", [(False, True), (True, False)])
def test_the_minutes_checkpoint_follows_rank_zeros_clock(two_ranks, monkeypatch, here, rank0):
    from peerlab.checkpointing import LastCheckpoint

    last = LastCheckpoint("unused", every_steps=1000, every_minutes=1.0)
    last._last_time -= 120 if here else 0  # this rank's own clock: due or not

    def rank_zero_says(tensor, src=0, **kwargs):
        assert src == 0
        tensor.fill_(int(rank0))

    monkeypatch.setattr(dist, "broadcast", rank_zero_says)
    assert last._time_due(trainer_at(here)) is rank0  # every rank saves at the step rank 0 chose


def test_ctrl_c_saves_the_step_reached_and_exits_130(compose, tmp_path, monkeypatch):
    from peerlab.lit_module import LanguageModel
    from peerlab.preemption import Preempted
    from peerlab.run_folder import read_results
    from peerlab.train import run

    real = LanguageModel.training_step

    def interrupted_at_step_7(self, batch, batch_idx):
        if self.global_step == 7 and not getattr(self, "_sent", False):
            self._sent = True
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        return real(self, batch, batch_idx)

    monkeypatch.setattr(LanguageModel, "training_step", interrupted_at_step_7)
    with pytest.raises(Preempted) as info:
        run(compose("budget=6e9", f"out_dir={tmp_path}", "run_name=r", "logger=csv"))
    exc = info.value
    assert exc.exit_code == 130 and exc.signum == signal.SIGINT and exc.next_action() == "rerun the same command to resume"
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert exc.received_step == 7 and exc.saved_step == ckpt["global_step"] == 8  # the step in flight finishes
    results = read_results(tmp_path / "r")
    assert results["status"] == "interrupted" and results["preempted"]["saved_step"] == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers handed back
