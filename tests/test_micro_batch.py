"""``data.batch_size=auto``: the largest micro-batch whose plan fits, the step's sequences unchanged, the choice
recorded in the run's config and kept on resume (peerlab.parallel.micro_batch)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from peerlab.config import ConfigError

GIB = 2**30
PAPER = ("model=d12", "layer=peer", "tokenizer=gpt2", "data.seq_len=2048", "trainer=fsdp", "trainer.devices=8",
         "trainer.precision=bf16-mixed", "data.batch_size=auto", "data.sequences_per_step=128")


def planned(cfg, micro: int, world: int = 8) -> float:
    from peerlab.parallel import cuda_overhead
    from peerlab.parallel.micro_batch import with_micro_batch
    from peerlab.parallel.plan import _meta_model, estimate, execution

    per = cfg.data.sequences_per_step // world
    model = _meta_model(cfg)
    ex = execution(with_micro_batch(cfg, micro, per // micro), "cuda", world, model)
    return estimate(model, ex).peak + cuda_overhead.total(ex)


def test_the_largest_micro_batch_under_the_limit_is_chosen_and_the_step_is_unchanged(compose, caplog):
    from peerlab.parallel.micro_batch import settle

    cfg = compose(*PAPER, tiny=False)
    need = {m: planned(cfg, m) for m in (16, 8, 4)}
    assert need[16] > need[8] > need[4]
    for limit, expected in ((need[16] + 1, 16), (need[16] - 1, 8), (need[8] - 1, 4)):
        with caplog.at_level("INFO", logger="peerlab.parallel.micro_batch"):
            out = settle(cfg, 8, "cuda", limit)
        assert (out.data.batch_size, out.trainer.accumulate_grad_batches) == (expected, 16 // expected)
        assert out.data.batch_size * out.trainer.accumulate_grad_batches * 8 == 128
    assert cfg.data.batch_size == "auto"  # the caller's config is left as it was
    assert "data.batch_size=auto: micro-batch 4 x 4 accumulated per process (128 sequences per step)" in caplog.text


def test_nothing_fits_is_one_line_and_the_plan_shows_it_as_a_point_that_does_not_fit(compose):
    from peerlab.parallel.micro_batch import NothingFits, settle
    from peerlab.parallel.plan import plan_point

    cfg = compose(*PAPER, tiny=False)
    with pytest.raises(NothingFits, match=r"data.batch_size=auto: even 1 sequence per micro-batch needs about [\d.]+ GiB"):
        settle(cfg, 8, "cuda", 1 * GIB)
    row = plan_point(cfg, [], 1.0, device="cuda")
    assert (row["micro_batch"], row["accumulate"], row["micro_batch_auto"], row["fits"]) == (1, 16, True, False)


def test_a_resumed_run_keeps_the_micro_batch_its_folder_recorded(compose):
    from peerlab.parallel.micro_batch import settle

    cfg = compose(*PAPER, tiny=False)
    saved = OmegaConf.merge(cfg, {"data": {"batch_size": 2}, "trainer": {"accumulate_grad_batches": 8}})
    out = settle(cfg, 8, "cuda", 1e15, saved)  # a larger card now: the recorded choice stands
    assert (out.data.batch_size, out.trainer.accumulate_grad_batches) == (2, 8)
    other = OmegaConf.merge(saved, {"data": {"sequences_per_step": 256}})  # another step: chosen afresh
    assert settle(cfg, 8, "cuda", 1e15, other).data.batch_size == 16


@pytest.mark.parametrize(("overrides", "world", "message"), [
    (("data.batch_size=auto",), 1, "data.batch_size='auto': needs data.sequences_per_step"),
    (("data.batch_size=auto", "data.sequences_per_step=12"), 8, "data.sequences_per_step=12: must be a multiple of the 8 processes"),
    (("data.batch_size=4", "trainer.accumulate_grad_batches=2", "data.sequences_per_step=12"), 1,
     "data.sequences_per_step=12: data.batch_size=4 x trainer.accumulate_grad_batches=2 x 1 processes make 8"),
    (("data.sequences_per_step=0",), 1, "data.sequences_per_step=0: must be an integer >= 1"),
    (("data.batch_size=big",), 1, "data.batch_size='big': must be an integer >= 1"),
])
def test_mistakes_are_one_line(compose, overrides, world, message):
    from peerlab.config import validate
    from peerlab.parallel.micro_batch import settle

    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
        settle(cfg, world, "cpu", 1e12)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_run_records_its_choice_and_a_rerun_finds_the_run_complete(compose, tmp_path):
    from peerlab.train import run

    cfg = compose("layer=ffw", "budget=1.2e9", "data.batch_size=auto", "data.sequences_per_step=8", f"out_dir={tmp_path}",
                  "logger=csv")
    results = run(cfg)
    assert results["status"] == "completed"
    chosen = results["config"]["data"]
    assert chosen["batch_size"] == 8 and results["config"]["trainer"]["accumulate_grad_batches"] == 1
    run_dir = tmp_path / results["run_dir"].rsplit("/", 1)[-1]
    saved = OmegaConf.load(run_dir / "run_config.yaml")
    assert saved.data.batch_size == 8 and saved.data.sequences_per_step == 8
    again = run(cfg)  # the same command: the recorded choice, the same identity, nothing to do
    assert again["status"] == "completed" and again["final_val_loss"] == results["final_val_loss"]
