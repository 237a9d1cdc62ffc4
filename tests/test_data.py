from __future__ import annotations

import numpy as np
import pytest
import torch

from peerlab.data import corpora, token_cache
from peerlab.data.datamodule import EvenSubset, PackedBlocks, TextDataModule
from peerlab.data.tokenizer import EOT, gpt2_tokenizer, train_bpe


def test_embedded_corpus_is_real_english_and_split_is_fixed():
    docs = corpora.load_documents(["wikipedia", "lee"])
    assert len(docs) > 300 and sum(len(d.text) for d in docs) > 3_000_000
    train, val = corpora.split_documents(docs, 0.05)
    again_train, again_val = corpora.split_documents(list(reversed(docs)), 0.05)
    assert [d.title for d in val] == [d.title for d in again_val]
    assert {d.title for d in train} == {d.title for d in again_train}
    assert not {d.title for d in train} & {d.title for d in val}
    share = sum(len(d.text) for d in val) / sum(len(d.text) for d in docs)
    assert 0.05 <= share < 0.15


def test_packed_blocks_shift_by_one():
    tokens = np.arange(100, dtype=np.uint16)
    ds = PackedBlocks(tokens, seq_len=10)
    assert len(ds) == 9
    x, y = ds[3]
    assert torch.equal(x, torch.arange(30, 40)) and torch.equal(y, torch.arange(31, 41))
    # Several shards: blocks never straddle two.
    ds = PackedBlocks([np.arange(25, dtype=np.uint16), np.arange(100, 131, dtype=np.uint16)], seq_len=10)
    assert len(ds) == 2 + 3
    assert torch.equal(ds[1][0], torch.arange(10, 20)) and torch.equal(ds[2][0], torch.arange(100, 110))
    assert torch.equal(ds[4][1], torch.arange(121, 131))
    with pytest.raises(ValueError, match="cannot fill one block"):
        PackedBlocks(np.arange(5, dtype=np.uint16), seq_len=10)


def test_train_fraction_keeps_evenly_spaced_blocks_of_every_source():
    # Three "sources" stored one after another, 40 blocks each: a prefix would drop the last source entirely.
    source_of_block = np.repeat(np.arange(3, dtype=np.uint16), 40 * 10)
    blocks = PackedBlocks(np.append(source_of_block, 0).astype(np.uint16), seq_len=10)
    half = EvenSubset(blocks, 0.5)
    assert len(half) == 60
    kept_sources = [int(half[i][0][0]) for i in range(len(half))]
    assert [kept_sources.count(s) for s in range(3)] == [20, 20, 20]
    assert len({tuple(half[i][0].tolist()) + (i,) for i in range(len(half))}) == 60
    assert len(EvenSubset(blocks, 1e-9)) == 1  # never empty


def test_datamodule_train_fraction_serves_and_reports_the_kept_share(tmp_path):
    texts = [" ".join(f"word{i % 50} text{j}" for i in range(300)) for j in range(6)]
    full = make_dm(tmp_path, _files(tmp_path, texts))
    full.setup()
    half = TextDataModule(full.corpus, seq_len=8, batch_size=2, tokenizer={"kind": "bpe", "vocab_size": 300},
                          cache_dir=str(tmp_path / "cache"), train_fraction=0.5)
    half.setup()
    assert len(half.train_set) == len(full.train_set) // 2
    assert half.split_tokens("train") == len(half.train_set) * 8 < full.split_tokens("train")
    assert half.split_tokens("val") == full.split_tokens("val") and len(half.val_set) == len(full.val_set)
    with pytest.raises(ValueError, match=r"data.train_fraction=0: must be in \(0, 1\]"):
        TextDataModule(full.corpus, seq_len=8, batch_size=2, tokenizer={}, train_fraction=0)


def test_gpt2_tokenizer_matches_known_ids():
    tok = gpt2_tokenizer()
    assert tok.get_vocab_size() == 50257
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.token_to_id(EOT) == 50256


def _files(tmp_path, texts):
    paths = []
    for i, t in enumerate(texts):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(t)
        paths.append(str(p))
    return paths


def make_dm(tmp_path, files, seq_len=8):
    return TextDataModule(corpora.EmbeddedCorpus("t", [], files, 0.3), seq_len=seq_len, batch_size=2,
                          tokenizer={"kind": "bpe", "vocab_size": 300}, cache_dir=str(tmp_path / "cache"))


def test_cache_detects_truncation_and_altered_bytes(tmp_path):
    files = _files(tmp_path, [f"document {i} " + "some words here " * 40 for i in range(6)])
    dm = make_dm(tmp_path, files)
    dm.prepare_data()
    entry, good = dm._entry, dm.manifest
    original = (entry / "train-00000.bin").read_bytes()

    def reload():
        fresh = make_dm(tmp_path, files)
        fresh.prepare_data()
        return (fresh._entry / "train-00000.bin").read_bytes()

    (entry / "train-00000.bin").write_bytes(original[:-2])  # truncate
    assert token_cache.verify(entry, dm.tokenizer) is None
    assert reload() == original
    altered = bytearray(original)
    altered[10] ^= 0xFF  # same size, one byte changed
    (entry / "train-00000.bin").write_bytes(bytes(altered))
    assert token_cache.verify(entry, dm.tokenizer) is None
    assert reload() == original
    assert _content(token_cache.verify(entry, dm.tokenizer)) == _content(good)


def _content(manifest: dict) -> dict:
    """A cache manifest without its timings (a rebuild takes its own time)."""
    return {**manifest, "splits": {name: {k: v for k, v in split.items() if k != "seconds"}
                                   for name, split in manifest["splits"].items()}}


def test_cache_from_another_tokenizer_is_not_used(tmp_path):
    files = _files(tmp_path, ["alpha beta gamma " * 50, "delta epsilon " * 50, "zeta eta theta " * 50])
    dm = make_dm(tmp_path, files)
    dm.prepare_data()
    other = train_bpe(["completely different text " * 20], 300)
    assert token_cache.verify(dm._entry, other) is None


@pytest.mark.parametrize("content,message", [
    (b"", "corpus is empty"),
    (b"\x00\x01\x02binary\x00", "looks binary"),
    (b"caf\xe9 latin-1 text", "is not valid UTF-8"),
])
def test_bad_corpus_files_give_clear_errors(tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(corpora.CorpusError, match=message):
        corpora.load_documents([], [bad])


def test_jsonl_needs_text_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(corpora.CorpusError, match="x.jsonl:2 has no string field 'text'"):
        corpora.load_documents([], [p])


def test_kjv_source_is_the_king_james_bible_by_chapter():
    docs = corpora.load_documents(["kjv"])
    assert len(docs) == 1189 and docs[0].source == "kjv"  # the chapters of the 66 books
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth.")
    assert docs[-1].text.endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert 4_000_000 < sum(len(d.text) for d in docs) < 4_300_000
    assert not any("[" in d.text or "]" in d.text for d in docs)  # the translators' brackets are removed
