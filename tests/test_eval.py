"""eval.py on a tiny trained checkpoint with every evaluation set as a local file in its public format."""

from __future__ import annotations

import csv
import gzip
import json
import math
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT, TINY
from peerlab.data import corpora


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS
    from peerlab.config import register_schema
    from peerlab.train import run

    register_schema()
    out = tmp_path_factory.mktemp("evalrun")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, "budget=1.3e10", f"out_dir={out}"])
    return run(cfg)


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    from datasets import Dataset

    d = tmp_path_factory.mktemp("evalsets")
    texts = [doc.text for doc in corpora.load_documents(["lee"])][:30]
    with gzip.open(d / "c4-validation.00000-of-00008.json.gz", "wt") as fh:
        for t in texts[:10]:
            fh.write(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com"}) + "\n")
    Dataset.from_dict({"text": [" = Title = \n", *[t + "\n" for t in texts[10:15]]]}).to_parquet(str(d / "test-00000-of-00001.parquet"))
    (d / "lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[15:20]))
    import zstandard

    pile = "".join(json.dumps({"text": t, "meta": {"pile_set_name": "Pile-CC"}}) + "\n" for t in texts[20:25])
    (d / "val.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(pile.encode()))  # the Pile's format
    with open(d / "curation.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "article_content"])
        w.writerows([["https://example.com", t] for t in texts[25:30]])
    return d


def test_eval_table_from_local_files(checkpoint, eval_files, tmp_path):
    out = tmp_path / "eval"
    seq_len = checkpoint["config"]["data"]["seq_len"]
    full_block_tokens = (checkpoint["val_tokens"] - 1) // seq_len * seq_len
    args = [
        f"ckpt={checkpoint['checkpoints']['last']}", "eval_sets=[embedded,c4,wikitext,lambada,pile,curation]",
        f"sets.c4.path={eval_files}", f"sets.wikitext.path={eval_files / 'test-00000-of-00001.parquet'}",
        f"sets.lambada.path={eval_files / 'lambada_test.jsonl'}", f"sets.pile.path={eval_files / 'val.jsonl.zst'}",
        f"sets.curation.path={eval_files / 'curation.csv'}", "sets.curation.text_field=article_content",
        f"out_dir={out}", "name=dense-tiny",
    ]
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "results.json").read_text())
    row = table["dense-tiny"]
    assert set(row) == {"embedded", "c4", "wikitext", "lambada", "pile", "curation"}
    assert all(math.isfinite(v) and 1 < v < 512 for v in row.values())  # below the uniform model's 512
    md = (out / "table.md").read_text()
    assert "| dense-tiny |" in md and "| Method | embedded | c4 | curation | lambada | pile | wikitext |" in md
    # Independent check: on exactly the validation blocks training scored, eval gives training's final loss.
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={checkpoint['checkpoints']['last']}",
                           "eval_sets=[embedded]", f"max_tokens={full_block_tokens}", f"out_dir={tmp_path / 'e2'}",
                           "name=x"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ppl = json.loads((tmp_path / "e2" / "results.json").read_text())["x"]["embedded"]
    assert math.log(ppl) == pytest.approx(checkpoint["final_val_loss"], rel=1e-4)


def test_eval_errors_are_one_line(checkpoint, tmp_path, entry):
    # refused before Hydra starts: eval.py's __main__ in this process
    for args, message in [
        (["ckpt=/no/such.ckpt"], "error: ckpt='/no/such.ckpt': no such checkpoint file"),
        ([f"ckpt={checkpoint['checkpoints']['last']}", "eval_sets=[wiki]"], "error: eval_sets: 'wiki' is not an evaluation set"),
        ([f"ckpt={checkpoint['checkpoints']['last']}", "eval_sets=embedded", "out_dir=/etc/hostname"],
         "error: out_dir='/etc/hostname': is a file, not a folder"),
    ]:
        code, _, err = entry("eval.py", *args, *(() if any(a.startswith("out_dir=") for a in args) else (f"out_dir={tmp_path}",)))
        assert code == 2 and message in err, err[-2000:]
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # found once the run has started (the set has no source): the real command line
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={checkpoint['checkpoints']['last']}",
                           "eval_sets=[pile]", f"out_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "error: eval set 'pile' has no hub source" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _eval_here(*args: str) -> tuple[int, str]:
    """eval.py's work in this process, on its config composed as eval.py composes it: ``(exit status, error line)``."""
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS
    from peerlab.errors import USER_ERRORS
    from peerlab.evaluate import run_eval, validate_eval

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=list(args))
    try:
        validate_eval(cfg)
        run_eval(cfg)
    except USER_ERRORS as exc:
        return 2, f"error: {exc}"
    return 0, ""


def test_unknown_keys_are_one_line_listing_the_allowed_keys(checkpoint, tmp_path, entry):
    ckpt = f"ckpt={checkpoint['checkpoints']['last']}"
    for arg, message in [
        ("foo=1", "error: foo=1: unknown key of eval.py; allowed: batch_size, ckpt, data, eval_sets, hf_cache_dir, "
                  "max_documents, max_tokens, name, out_dir, sets, wandb"),
        ("+foo=1", "error: foo=1: unknown key of eval.py; allowed: batch_size, ckpt, data, eval_sets, hf_cache_dir, "
                   "max_documents, max_tokens, name, out_dir, sets, wandb"),
        ("sets.c5.path=/x", "error: sets.c5.path=/x: unknown key of eval.py; allowed under sets: c4, curation, lambada, pile, wikitext"),
        ("data.files=[a]", "error: data.files=[a]: unknown key of eval.py; allowed under data: path"),
    ]:
        code, _, err = entry("eval.py", ckpt, arg, f"out_dir={tmp_path}")
        assert code == 2, err[-2000:]
        assert err.strip() == message, err[-2000:]


def test_c4_location_from_data_path_or_from_the_checkpoint(checkpoint, eval_files, tmp_path):
    import torch

    from peerlab.checkpointing import load_checkpoint_dict

    last = checkpoint["checkpoints"]["last"]
    by_sets = _eval_here(f"ckpt={last}", "eval_sets=[c4]", f"sets.c4.path={eval_files}", f"out_dir={tmp_path / 'a'}", "name=x")
    by_alias = _eval_here(f"ckpt={last}", "eval_sets=[c4]", f"data.path={eval_files}", f"out_dir={tmp_path / 'b'}", "name=x")
    assert by_sets[0] == 0 and by_alias[0] == 0, by_alias
    ppl = json.loads((tmp_path / "a" / "results.json").read_text())["x"]["c4"]
    assert json.loads((tmp_path / "b" / "results.json").read_text())["x"]["c4"] == ppl

    code, err = _eval_here(f"ckpt={last}", "eval_sets=[c4]", f"data.path={eval_files}", "sets.c4.path=/elsewhere",
                           f"out_dir={tmp_path / 'c'}")
    assert code == 2 and "error: data.path=" in err and "sets.c4.path" in err

    # A checkpoint of a C4 run remembers where its data was: no path needed.
    ckpt = load_checkpoint_dict(last)
    ckpt["peerlab_config"]["data"] = {**ckpt["peerlab_config"]["data"], "kind": "c4", "path": str(eval_files)}
    c4_ckpt = tmp_path / "c4run.ckpt"
    torch.save(ckpt, c4_ckpt)
    own = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={c4_ckpt}", "eval_sets=[c4]",
                          f"out_dir={tmp_path / 'd'}", "name=x"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert own.returncode == 0, own.stderr[-2000:]  # the command line, once, end to end
    assert f"c4: the checkpoint's own data.path={eval_files}" in own.stdout
    assert json.loads((tmp_path / "d" / "results.json").read_text())["x"]["c4"] == ppl


def test_embedded_split_scored_per_source(checkpoint, tmp_path):
    """``embedded:<source>`` scores the validation documents of one source; together the sources are the split."""
    from peerlab.evaluate import load_checkpoint, set_documents

    module, _ = load_checkpoint(checkpoint["checkpoints"]["last"])
    sources = checkpoint["config"]["data"]["sources"]
    whole = set_documents("embedded", {}, module, None, None)
    parts = {s: set_documents(f"embedded:{s}", {}, module, None, None) for s in sources}
    assert all(parts.values()) and sorted(sum(parts.values(), [])) == sorted(whole)
    code, err = _eval_here(f"ckpt={checkpoint['checkpoints']['last']}",
                           f"eval_sets=[{','.join(f'embedded:{s}' for s in sources)}]", f"out_dir={tmp_path}", "name=x")
    assert code == 0, err
    row = json.loads((tmp_path / "results.json").read_text())["x"]
    assert set(row) == {f"embedded:{s}" for s in sources} and len(set(row.values())) == len(sources)
    code, err = _eval_here(f"ckpt={checkpoint['checkpoints']['last']}", "eval_sets=[embedded:kjv]", f"out_dir={tmp_path}")
    assert code == 2 and "error: eval_sets: 'embedded:kjv': the checkpoint's validation split has no 'kjv' documents; its sources: lee, wikipedia" in err, err


def test_rows_are_keyed_by_checkpoint_and_record_the_tokens_they_score(checkpoint, tmp_path):
    """Two checkpoints whose default labels agree (same layer, model and budget) get two rows; scoring a checkpoint
    again keeps its own row; each number records the tokens it was computed on."""
    import shutil

    from peerlab.evaluate import PROVENANCE

    first = checkpoint["checkpoints"]["last"]
    other = tmp_path / "other-run" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    shutil.copy(first, other)
    out = tmp_path / "eval"
    for ckpt in (first, other, first):
        assert _eval_here(f"ckpt={ckpt}", "eval_sets=[embedded]", "max_tokens=256", f"out_dir={out}") == (0, "")
    table = json.loads((out / "results.json").read_text())
    assert len(table) == 2, table
    sources = json.loads((out / PROVENANCE).read_text())
    assert sorted(s["ckpt"] for s in sources.values()) == sorted(str(p) for p in (pathlib.Path(first).resolve(), other.resolve()))
    label = next(k for k, s in sources.items() if s["ckpt"] == str(other.resolve()))
    assert label.endswith("(other-run)")
    numbers = [s["sets"]["embedded"] for s in sources.values()]
    assert numbers[0] == numbers[1] and numbers[0]["tokens"] == 256 and len(numbers[0]["tokens_sha256"]) == 16
