"""``python -m peerlab.harness``: lm-evaluation-harness's own tasks and metrics on a checkpoint, offline on the local
tasks in tests/harness_tasks; its scores are peerlab's own log-likelihoods and greedy generations."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import ROOT
from tiny_checkpoint import write_checkpoint

TASKS = ROOT / "tests" / "harness_tasks"
LIMIT = 3  # documents per task: limit= is passed through


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("harness") / "last.ckpt"
    write_checkpoint(path, "peer")
    return path


def own_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """The continuation's log-likelihood from one plain forward pass over context + continuation."""
    ctx = tokenizer.encode(context).ids
    whole = tokenizer.encode(context + continuation).ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].float(), dim=-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))


@pytest.fixture(scope="module")
def scored(checkpoint, tmp_path_factory):
    """One run of the command line over the committed tasks, and a copy of peerlab_gen whose first two targets are
    what peerlab's own greedy decoding writes (so its exact_match over 3 documents must be 2/3)."""
    import peerlab
    from peerlab.generate import Sampling, complete
    from peerlab.harness import main

    root = tmp_path_factory.mktemp("harness-run")
    tasks = root / "tasks"
    tasks.mkdir()
    for name in ("peerlab_mc", "peerlab_gen"):  # the committed tasks, their data found from anywhere
        text = (TASKS / f"{name}.yaml").read_text().replace(f"tests/harness_tasks/{name}.jsonl",
                                                            str(TASKS / f"{name}.jsonl"))
        (tasks / f"{name}.yaml").write_text(text)
    model, tokenizer = peerlab.load(checkpoint)
    docs = [json.loads(line) for line in (TASKS / "peerlab_gen.jsonl").read_text().splitlines()]
    greedy = Sampling(max_new_tokens=8, temperature=0)
    for i, doc in enumerate(docs):
        doc["target"] = complete(model, tokenizer, doc["prompt"], greedy, stop=["\n"]) if i < 2 else "never written"
    (tasks / "own.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "own.yaml").write_text((tasks / "peerlab_gen.yaml").read_text()
                                    .replace("task: peerlab_gen", "task: peerlab_gen_own")
                                    .replace(str(TASKS / "peerlab_gen.jsonl"), str(tasks / "own.jsonl")))
    assert main([f"ckpt={checkpoint}", "tasks=peerlab_mc,peerlab_gen,peerlab_gen_own", f"include_path={tasks}",
                 f"limit={LIMIT}", f"out_dir={root / 'out'}"]) == 0
    return root / "out", json.loads((root / "out" / "results.json").read_text())


def test_multiple_choice_scores_are_peerlabs_own_log_likelihoods(checkpoint, scored):
    import peerlab

    out, record = scored
    model, tokenizer = peerlab.load(checkpoint)
    docs = [json.loads(line) for line in (TASKS / "peerlab_mc.jsonl").read_text().splitlines()][:LIMIT]
    acc, acc_norm = [], []
    for doc in docs:
        ll = [own_loglikelihood(model, tokenizer, doc["question"], c) for c in doc["choices"]]
        acc.append(max(range(len(ll)), key=ll.__getitem__) == doc["answer"])
        normed = [x / len(c) for x, c in zip(ll, doc["choices"], strict=True)]  # the harness's acc_norm: per character
        acc_norm.append(max(range(len(ll)), key=normed.__getitem__) == doc["answer"])
    scores = record["results"]["peerlab_mc"]
    assert scores["acc,none"] == pytest.approx(sum(acc) / len(docs), abs=1e-12)
    assert scores["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(docs), abs=1e-12)
    assert record["n-samples"]["peerlab_mc"]["effective"] == len(docs)
    assert "| peerlab_mc | acc | " in (out / "harness.md").read_text()
    print(f"peerlab_mc: acc {scores['acc,none']:.4f}, acc_norm {scores['acc_norm,none']:.4f} (peerlab's own: "
          f"{sum(acc) / len(docs):.4f}, {sum(acc_norm) / len(docs):.4f})")


def test_generation_scores_are_peerlabs_own_greedy_continuations(scored):
    out, record = scored
    assert record["limit"] == LIMIT and record["n-samples"]["peerlab_gen_own"]["effective"] == LIMIT
    assert record["results"]["peerlab_gen_own"]["exact_match,none"] == pytest.approx(2 / 3)  # 2 of the 3 scored
    assert record["results"]["peerlab_gen"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert "| peerlab_gen_own | exact_match | 0.6667 |" in (out / "harness.md").read_text()


def test_each_request_is_the_log_likelihood_of_one_forward_pass(checkpoint):
    from types import SimpleNamespace

    import peerlab
    from peerlab.harness import PeerlabLM

    model, tokenizer = peerlab.load(checkpoint)
    lm = PeerlabLM(model, tokenizer)
    pairs = [("The river runs through the", " town"), ("A short note on", " tables of experts"), ("what", " the")]
    got = lm.loglikelihood([SimpleNamespace(args=p) for p in pairs])
    for (context, continuation), (ll, _) in zip(pairs, got, strict=True):
        assert ll == pytest.approx(own_loglikelihood(model, tokenizer, context, continuation), abs=1e-5)
    text = "the history of the river"
    (rolling,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    from peerlab.data.tokenizer import eot_id

    ids = [eot_id(tokenizer), *tokenizer.encode(text).ids]
    assert len(ids) <= model.shape.seq_len + 1  # one window: the plain forward pass scores it all
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), dim=-1)
    assert rolling == pytest.approx(sum(logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))), abs=1e-4)


@pytest.mark.parametrize(("args", "message"), [
    (("tasks=peerlab_mc", "limit=0"), "limit=0: must be > 0"),
    (("tasks=peerlab_mc", "include_path=/no/such/folder"), "include_path='/no/such/folder': not a folder"),
    (("tasks=peerlab_mc", "colour=red"), "colour: not a key of python -m peerlab.harness"),
])
def test_mistakes_are_one_line(checkpoint, entry, args, message):
    code, _, err = entry("src/peerlab/harness.py", f"ckpt={checkpoint}", f"include_path={TASKS}", *args) \
        if not any(a.startswith("include_path") for a in args) else entry("src/peerlab/harness.py", f"ckpt={checkpoint}", *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_unknown_and_unreachable_tasks_are_refused_in_one_line(tmp_path, monkeypatch):
    """A task on the hub without a network (a task of the folder's naming a hub dataset, as hellaswag's does, so that
    the harness's thousands of task files need not be indexed) and a task nobody defines: one line each."""
    from peerlab.config import ConfigError
    from peerlab.harness import task_dict, task_manager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "hub.yaml").write_text((TASKS / "peerlab_mc.yaml").read_text()
                                       .replace("task: peerlab_mc", "task: on_the_hub")
                                       .replace("dataset_path: json", "dataset_path: Rowan/hellaswag")
                                       .replace("dataset_kwargs:", "unused_kwargs:"))
    manager = task_manager(["on_the_hub"], str(tmp_path))
    for task, message in (("on_the_hub", "tasks='on_the_hub': its data could not be loaded"),
                          ("no_such_task", "tasks='no_such_task': the harness knows no such task")):
        with pytest.raises(ConfigError) as info:
            task_dict([task], str(tmp_path), manager)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.slow
def test_a_hub_task_of_the_harness_without_a_network_is_refused_in_one_line(monkeypatch):
    from peerlab.config import ConfigError
    from peerlab.harness import task_dict

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"^tasks='hellaswag': its data could not be loaded"):
        task_dict(["hellaswag"], None)


def test_a_missing_extra_names_the_install_command(monkeypatch):
    from peerlab.config import ConfigError

    monkeypatch.delitem(sys.modules, "peerlab.harness", raising=False)
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    with pytest.raises(ConfigError, match=r"lm-eval is not installed.*pip install -e '\.\[eval\]'"):
        import peerlab.harness  # noqa: F401


def test_wandb_true_adds_the_scores_to_the_checkpoints_own_run(tmp_path):
    """The scores land, as a table, in the W&B run of the checkpoint's folder (offline here), one row past its last
    logged step, as eval.py's perplexities do."""
    from peerlab import wandb_offline
    from peerlab.harness import _log_wandb

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    write_checkpoint(run_dir / "checkpoints" / "last.ckpt", "ffw")
    results = {"results": {"peerlab_mc": {"alias": "peerlab_mc", "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    _log_wandb(str(run_dir / "checkpoints" / "last.ckpt"), "ffw w 1e9", results)
    (folder,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    (row,) = wandb_offline.history(folder)
    assert row["eval/harness/_type"] == "table-file" and row["eval/harness/nrows"] == 1 and row["_step"] == 0
