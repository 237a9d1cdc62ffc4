"""data=c4 on small local shards written in C4's exact release format, through the same datasets code as the hub."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from peerlab.data import corpora, token_cache
from peerlab.data.c4 import C4Corpus, hub_unreachable_reason
from peerlab.data.datamodule import TextDataModule
from peerlab.data.tokenizer import eot_id


@pytest.fixture(scope="module")
def c4_dir(tmp_path_factory):
    """Two training shards and one validation shard named and laid out as allenai/c4's en/ release."""
    folder = tmp_path_factory.mktemp("c4")
    docs = [d.text for d in corpora.load_documents(["lee"])]  # real English paragraphs
    layout = {"c4-train.00000-of-01024.json.gz": docs[:120], "c4-train.00001-of-01024.json.gz": docs[120:260],
              "c4-validation.00000-of-00008.json.gz": docs[260:]}
    for name, texts in layout.items():
        with gzip.open(folder / name, "wt", encoding="utf-8") as fh:
            for i, text in enumerate(texts):
                record = {"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.com/{name}/{i}"}
                fh.write(json.dumps(record) + "\n")
    return folder


def make_dm(c4_dir, cache, **kw):
    corpus = C4Corpus(path=str(c4_dir), train_shards=2, val_shards=1, num_proc=2, hf_cache_dir=str(cache / "hf"))
    return TextDataModule(corpus, seq_len=16, batch_size=4, tokenizer={"kind": "bpe", "vocab_size": 400},
                          cache_dir=str(cache), **kw)


def reference_tokens(c4_dir, tok, prefix):
    eot = eot_id(tok)
    ids = []
    for path in sorted(c4_dir.glob(f"{prefix}.*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                ids.extend(tok.encode(json.loads(line)["text"]).ids + [eot])
    return np.asarray(ids)


def test_c4_shards_tokenize_in_order_completely(c4_dir, tmp_path):
    dm = make_dm(c4_dir, tmp_path)
    dm.prepare_data()
    for split, prefix in (("train", "c4-train"), ("val", "c4-validation")):
        cached = np.concatenate(token_cache.load_split(dm._entry, dm.manifest, split))
        assert np.array_equal(cached, reference_tokens(c4_dir, dm.tokenizer, prefix))
    assert dm.manifest["splits"]["train"]["documents"] == 260


def test_sharded_cache_corruption_forces_rebuild(c4_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "SHARD_TOKENS", 5000)
    dm = make_dm(c4_dir, tmp_path)
    dm.prepare_data()
    shards = dm.manifest["splits"]["train"]["shards"]
    assert len(shards) > 2
    victim = dm._entry / shards[1]["file"]
    good = victim.read_bytes()
    for damage in (lambda b: b[:-1], lambda b: b[:7] + bytes([b[7] ^ 1]) + b[8:]):
        victim.write_bytes(damage(good))
        assert token_cache.verify(dm._entry, dm.tokenizer) is None
        again = make_dm(c4_dir, tmp_path)
        again.prepare_data()
        assert victim.read_bytes() == good


class FakeTrainer(SimpleNamespace):
    accumulate_grad_batches = 1


def batches(dm, step, rank=0, world=1, max_steps=12):
    dm.trainer = FakeTrainer(global_step=step, max_steps=max_steps, global_rank=rank, world_size=world)
    return [x for x, _ in dm.train_dataloader()]


def test_ranks_disjoint_and_mid_epoch_resume_exact(c4_dir, tmp_path):
    dm = make_dm(c4_dir, tmp_path)
    dm.setup()
    whole = batches(dm, 0)
    assert len(whole) == 12
    resumed = batches(dm, 5)
    assert len(resumed) == 7 and all(torch.equal(a, b) for a, b in zip(whole[5:], resumed, strict=True))
    r0, r1 = batches(dm, 0, 0, 2), batches(dm, 0, 1, 2)
    rows = lambda bs: {tuple(row.tolist()) for b in bs for row in b}  # noqa: E731
    assert not rows(r0) & rows(r1)
    assert len(rows(r0)) + len(rows(r1)) == 2 * 12 * 4


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no route"])
def test_offline_hub_fails_fast_with_one_message(monkeypatch, how):
    import socket

    from peerlab.data.corpora import CorpusError

    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a machine with no route to the hub, whatever this one has: the connection attempt fails
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

        def unreachable(*args, **kwargs):
            raise OSError(101, "Network is unreachable")

        monkeypatch.setattr(socket, "create_connection", unreachable)
        assert "Network is unreachable" in hub_unreachable_reason()
    import datasets

    def tried(*args, **kwargs):  # the refusal comes before any load, so nothing waits on a network's retries
        raise AssertionError("load_dataset was called: the refusal did not come first")

    monkeypatch.setattr(datasets, "load_dataset", tried)
    with pytest.raises(CorpusError) as info:
        C4Corpus(path=None)
    assert "data.path=" in str(info.value) and "\n" not in str(info.value)


def test_missing_or_empty_path_is_a_clear_error(tmp_path):
    from peerlab.data.corpora import CorpusError

    with pytest.raises(CorpusError, match="not a directory"):
        C4Corpus(path=str(tmp_path / "nope"))
    with pytest.raises(CorpusError, match="no c4-train"):
        C4Corpus(path=str(tmp_path))


def test_train_py_on_local_c4(c4_dir, tmp_path, compose):
    from peerlab.train import run

    cfg = compose("data=c4", f"data.path={c4_dir}", "data.seq_len=32", "data.batch_size=8", "data.num_workers=0",
                  "data.num_proc=2", "budget=6e9", f"out_dir={tmp_path}")
    r = run(cfg)
    assert r["status"] == "completed" and r["train_tokens_available"] > 10_000
