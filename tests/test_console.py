"""What a user sees: a start-up log that states each fact once, no third-party noise, and a progress bar in budget
terms (steps of max_steps, budget%, tokens, losses, tok/s, ETA; no epoch counter, no v_num)."""

from __future__ import annotations

import io
import logging
import re
import warnings

from conftest import TINY, run_train
from peerlab.console import quiet_third_party
from peerlab.progress import describe

NOISE = ("litlogger", "💡", "anonymous setting", "LeafSpec", "GPU available", "TPU available", "Epoch 0", "v_num",
         "`Trainer.fit` stopped", "Validation DataLoader", "`srun` command is available", "was configured so")


def _lines(text: str) -> list[str]:
    """Console lines, progress-bar redraws (carriage returns) split apart, timestamps dropped."""
    lines = []
    for raw in re.split(r"[\r\n]+", text):
        line = re.sub(r"^\[[0-9 :,\-]+\]", "", raw).strip()
        if line:
            lines.append(line)
    return lines


def test_startup_states_each_fact_once_and_shows_a_budget_progress_bar(tmp_path, cache_dir):
    args = [a for a in TINY if not a.startswith("trainer.progress_bar")]
    proc = run_train(*args, "trainer.progress_bar=true", "trainer.log_every_steps=5", "budget=1.3e10",
                     f"out_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in out, f"{noise!r} printed:\n{out[-4000:]}"
    lines = _lines(out)
    facts = [ln for ln in lines if not re.match(r"^(train|tokenizing) ", ln)]  # bars redraw by design
    duplicated = sorted({ln for ln in facts if facts.count(ln) > 1})
    assert not duplicated, duplicated
    for fact in ("run dir: ", "model: tiny, layer ffw", "budget: 1.3e+10 FLOPs = ", "device: cpu", "W&B: offline",
                 "wandb sync ", "done: "):
        assert sum(fact in ln for ln in lines) == 1, (fact, lines)
    # stderr is a pipe here, as in a SLURM log: one plain line per refresh, no carriage-return redraws.
    assert "\r" not in proc.stderr
    bars = [ln for ln in lines if ln.startswith("train ") and " steps · " in ln]
    assert bars, lines
    assert len(bars) == len(set(bars)), bars  # the final state once, not once per hook
    final = bars[-1]
    steps = re.match(r"train (\d+)/(\d+) steps", final)
    assert steps and steps.group(1) == steps.group(2), final  # the progress ends at max_steps
    assert sum(b.startswith(f"train {steps.group(2)}/{steps.group(2)} steps") for b in bars) == 1, bars  # once
    assert [int(re.match(r"train (\d+)/", b).group(1)) for b in bars] == sorted(int(re.match(r"train (\d+)/", b).group(1)) for b in bars)
    for part in ("budget ", " tok · loss ", "val ", "tok/s", " elapsed, 00:00 left"):
        assert part in final, final


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_redrawn_bar_and_a_log_gets_plain_lines():
    from types import SimpleNamespace

    from peerlab.progress import BudgetProgressBar, PlainProgress

    for stream, kind in ((_Terminal(), "tqdm"), (io.StringIO(), "plain")):
        bar = BudgetProgressBar(refresh_steps=2, stream=stream)
        trainer = SimpleNamespace(max_steps=4, global_step=0, is_global_zero=True, progress_bar_metrics={"train/loss": 3.0})
        bar._trainer = trainer
        bar.on_train_start(trainer, None)
        assert isinstance(bar.bar, PlainProgress) == (kind == "plain")
        for step in range(1, 5):
            trainer.global_step = step
            bar.on_train_batch_end(trainer, SimpleNamespace(tokens_done=lambda: 100, flops_done=lambda: 1, budget=4))
        bar.on_train_end(trainer, SimpleNamespace(tokens_done=lambda: 100, flops_done=lambda: 1, budget=4))
        out = stream.getvalue()
        if kind == "tqdm":
            assert "\r" in out and "train 4/4 steps |" in out
        else:
            assert "\r" not in out
            assert [ln.split(" · ")[0] for ln in out.splitlines()] == ["train 2/4 steps", "train 4/4 steps"]


def test_filters_are_precise_our_warnings_and_logs_still_show(caplog):
    quiet_third_party()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_third_party()  # installed again inside the fresh filter state
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, say we", FutureWarning, stacklevel=1)
        warnings.warn("a peerlab warning", UserWarning, stacklevel=1)
    # The LeafSpec filter matches Lightning's module only: the same text raised here still shows.
    assert [str(w.message) for w in caught] == ["`isinstance(treespec, LeafSpec)` is deprecated, say we",
                                                "a peerlab warning"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("Seed set to 0")
        logging.getLogger("peerlab.train").info("GPU available: our own line")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Seed set to 0", "GPU available: our own line"]


def test_progress_postfix():
    text = describe({"budget%": 42.123, "train/loss": 5.4123, "val/loss": 5.44, "tok/s": 2345.0}, 1_080_000)
    assert text == "budget 42.1% · 1.08M tok · loss 5.412 · val 5.440 · 2.35k tok/s"
    assert describe({}, 12) == "12 tok"


def test_a_rank_above_zero_keeps_the_console_for_warnings_and_its_log_for_everything(tmp_path):
    import io
    import logging

    from peerlab.console import one_log_per_rank

    root = logging.getLogger()
    console_text = io.StringIO()
    console = logging.StreamHandler(console_text)
    shared = logging.FileHandler(tmp_path / "train.log")
    root.addHandler(console)
    root.addHandler(shared)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        one_log_per_rank(1)
        logging.getLogger("peerlab.train").info("run dir: somewhere")
        logging.getLogger("peerlab.train").warning("a warning of rank 1")
        assert "run dir" not in console_text.getvalue() and "a warning of rank 1" in console_text.getvalue()
        for h in root.handlers:
            h.flush()
        assert "run dir: somewhere" in (tmp_path / "train.rank1.log").read_text()
    finally:
        root.setLevel(level)
        for h in [h for h in root.handlers if h is console or (isinstance(h, logging.FileHandler)
                                                               and str(tmp_path) in h.baseFilename)]:
            root.removeHandler(h)
            h.close()


def test_lightnings_model_registry_tip_and_the_resume_folder_warning_are_dropped():
    import logging
    import warnings

    from peerlab.console import quiet_third_party

    quiet_third_party()
    record = logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, __file__, 1,
                               "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](x)", None, None)
    assert not logging.getLogger("lightning.pytorch.utilities.rank_zero").filter(record)
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("default")  # what the test runner set aside, quiet_third_party sets again
        quiet_third_party()
        warnings.warn("Checkpoint directory /r/checkpoints exists and is not empty.", UserWarning, stacklevel=1)
        warnings.warn("something else of ours", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else of ours"]
