"""Analysis never mixes runs: a moved-aside earlier run is no seed, and runs on other data are not pooled."""

from __future__ import annotations

import json

from peerlab.analysis.__main__ import main
from peerlab.analysis.collect import check_same_data, collect


def write_run(folder, *, loss=3.0, seed=0, data=None, vocab=512, files=None):
    folder.mkdir(parents=True)
    config = {"layer": {"name": "ffw"}, "model": {"name": "tiny"}, "seed": seed, "tokenizer": {"kind": "bpe", "vocab_size": vocab},
              "data": {"kind": "embedded", "name": "files" if files else "embedded", "sources": [] if files else ["wikipedia"],
                       "files": files or [], "val_fraction": 0.05, "seq_len": 32}}
    results = {"status": "completed", "config": config, "budget": 1e10, "params_dense_backbone": 1e5, "params_active": 1e5,
               "final_val_loss": loss, "vocab_size": vocab}
    if data is not None:
        results["data"] = data
    (folder / "results.json").write_text(json.dumps(results))


FP = {"corpus": "embedded-abc", "tokenizer": "t1", "vocab_size": 512, "tokens": "aaaa"}


def test_a_moved_aside_run_is_not_counted_as_a_seed(tmp_path):
    write_run(tmp_path / "ffw-tiny-1e10-s0", data=FP)
    write_run(tmp_path / "ffw-tiny-1e10-s0.previous-20261207-101010", data=FP, loss=3.5)
    write_run(tmp_path / "ffw-tiny-1e10-s0.previous-20261207-101010~2", data=FP, loss=3.6)
    runs, _ = collect([tmp_path])
    assert [r.path.name for r in runs] == ["ffw-tiny-1e10-s0"]


def test_runs_on_other_data_tokenizer_or_vocabulary_are_refused_in_one_line(tmp_path, capsys):
    write_run(tmp_path / "a", data=FP)
    write_run(tmp_path / "b", data={**FP, "tokens": "bbbb"}, seed=1)
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "(data fingerprint: 'aaaa' and 'bbbb')" in err
    assert not (tmp_path / "out").exists()


def test_runs_from_before_fingerprints_compare_by_config_and_vocabulary(tmp_path):
    write_run(tmp_path / "files512", files=["/c.jsonl"], vocab=512)
    write_run(tmp_path / "embedded4096", vocab=4096, data={**FP, "vocab_size": 4096})
    runs, _ = collect([tmp_path])
    problem = check_same_data(runs)
    assert problem is not None and "embedded4096" in problem and "files512" in problem
    same = [tmp_path / "same" / n for n in ("s0", "s1")]
    write_run(same[0], data=FP)
    write_run(same[1], data=FP, seed=1)
    runs, _ = collect([tmp_path / "same"])
    assert check_same_data(runs) is None and len(runs) == 2
