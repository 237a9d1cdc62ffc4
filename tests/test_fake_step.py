"""The planner against torch's own memory tracker: a real FSDP step of 8 fake ranks on fake tensors
(peerlab.parallel.fake_step), at a small size here; experiments/at_scale.py does the same at the paper's scale."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT

# the largest differences measured at this size are -7.7% (peer_small, tables split over 2) and +7.0% (peer_small
# gathered); at the paper's scale -1.3% (experiments/results/memory/at_scale.md): about twice the largest
TOLERANCE = 0.15
FSDP8 = ("trainer=fsdp", "trainer.devices=8", "trainer.precision=bf16-mixed", "data.batch_size=4",
         "trainer.accumulate_grad_batches=2", "trainer.loss_chunk_tokens=0")


@pytest.mark.parametrize(("layer", "m"), [("ffw", 1), ("moe", 1), ("pkm", 1), ("pkm", 2), ("peer_small", 1),
                                          ("peer_small", 2), ("memory_plus", 2)])
def test_the_planned_peak_is_within_tolerance_of_torchs_tracker(compose, layer, m):
    from peerlab.parallel.fake_step import tracked_step
    from peerlab.parallel.plan import plan_point, vocab_size

    extra = ("layer.impl=chunked",) if layer.startswith("peer") else ()
    cfg = compose(f"layer={layer}", *FSDP8, f"trainer.memory_parallel={m}", *extra)
    row = plan_point(cfg, [], 80.0, device="cuda")
    step = tracked_step(cfg, 8, vocab_size(cfg), row["memory_parallel"])
    assert row["memory_parallel"] == m
    assert step.peak > 0 and sum(step.categories.values()) == step.peak
    assert abs(row["estimate_gb"] * 2**30 / step.peak - 1) <= TOLERANCE, (row["estimate_gb"] * 2**30, step.peak)


def test_dtensor_shape_propagation_is_not_counted_as_a_ranks_memory(compose, monkeypatch):
    """Without its own fake mode for DTensor's propagation, the tracker counts the whole (unsplit) table's optimizer
    temporaries on every rank under AdamW's foreach kernels: the artefact behind the -26% once reported for
    d12/pkm."""
    import contextlib

    from peerlab.parallel import fake_step
    from peerlab.parallel.plan import vocab_size

    cfg = compose("layer=pkm", *FSDP8, "trainer.memory_parallel=2")
    from torch.distributed.tensor import DTensor

    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()  # DTensor caches each op's propagation, which then runs no more
    propagator._propagate_tensor_meta_cached.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(fake_step, "_own_propagation_mode", contextlib.nullcontext)
        counted = fake_step.tracked_step(cfg, 8, vocab_size(cfg), 2, fused_adamw=False)
    honest = fake_step.tracked_step(cfg, 8, vocab_size(cfg), 2, fused_adamw=False)
    table = 1024**2 * 64 * 4  # PKM's values, whole: 1024^2 rows of d_model = 64 floats
    assert counted.grouped()["optimizer"] - honest.grouped()["optimizer"] >= table


def test_row_groups_on_fake_tensors_take_uniform_retrievals_row_count():
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from peerlab.mixers.row_groups import RowGroups
    from peerlab.mixers.sparse_grads import expected_rows

    with FakeTensorMode():
        groups = RowGroups(torch.randint(0, 1000, (64, 16)), 1000)
        assert groups.rows.shape == (expected_rows(64 * 16, 1000),) == groups.offsets.shape
    real = RowGroups(torch.tensor([[3, 1], [3, 2]]), 10)
    assert real.rows.tolist() == [1, 2, 3] and real.offsets.tolist() == [0, 1, 2]


def test_the_committed_at_scale_table_covers_both_cards_within_ten_percent():
    path = ROOT / "experiments" / "results" / "memory"
    rows = [r for card in (40, 80) for r in json.loads((path / f"at_scale_{card}gb.json").read_text()).values()]
    assert len(rows) == 16 + 8 + 16  # every point on both cards, and on 40 GB PKM's and PEER's tables gathered
    assert all(abs(r["plan_gib"] / r["tracker_gib"] - 1) <= 0.10 for r in rows)
    assert "every point within 10%: True" in (path / "at_scale.md").read_text()


@pytest.mark.slow
def test_the_committed_at_scale_table_is_what_the_planner_gives_now():
    """The planner's column is recomputed (the tracker's is measured once, by experiments/at_scale.py)."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import at_scale

    rows = [at_scale.with_plan(r) for card in at_scale.CARDS
            for r in json.loads((at_scale.RESULTS / f"at_scale_{card}gb.json").read_text()).values()]
    assert (at_scale.RESULTS / "at_scale.md").read_text() == at_scale.table(rows)


@pytest.mark.parametrize(("card", "point"), [
    (40, "model=d24 layer=moe"),  # peaks at the MoE block's reduce-scatter, its weights freed
    (40, "model=d24 layer=peer trainer.memory_parallel=1 data.batch_size=4 trainer.accumulate_grad_batches=4 "
         "data.sequences_per_step=null layer.impl=chunked"),  # dense table gradients and their used rows' sums
    (80, "model=d24 layer=ffw"),  # the chunked loss's forward, 16 sequences a micro-batch
    (40, "model=d24 layer=peer"),  # tables split over 8
])
def test_the_planner_still_meets_the_stored_tracker_at_full_scale(card, point):
    """The planner now, against the tracker's committed figures at four telling points of the paper's grid, within
    twice the largest difference measured there (1.3%): a fast check of what the slow table test checks for all."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import at_scale

    rows = json.loads((at_scale.RESULTS / f"at_scale_{card}gb.json").read_text())
    row = at_scale.with_plan(rows[point])
    assert abs(row["plan_gib"] / row["tracker_gib"] - 1) <= 0.026, (row["plan_gib"], row["tracker_gib"])
