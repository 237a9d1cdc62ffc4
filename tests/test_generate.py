"""Text from a checkpoint: ``peerlab.load`` and ``generate.py``; sampling is a pure function of the seed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


def test_load_gives_the_model_and_its_tokenizer(tiny_run):
    import peerlab
    from peerlab.model import Transformer

    model, tokenizer = peerlab.load(tiny_run["checkpoints"]["last"])
    assert isinstance(model, Transformer) and not model.training
    assert tokenizer.get_vocab_size() == tiny_run["vocab_size"] == model.shape.vocab_size


def test_sampling_is_a_pure_function_of_the_seed(tiny_run):
    import peerlab
    from peerlab.generate import Sampling, complete, sample

    model, tokenizer = peerlab.load(tiny_run["checkpoints"]["last"])
    prompt = tokenizer.encode("The history of").ids
    draws = [sample(model, prompt, Sampling(max_new_tokens=12, seed=s)) for s in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2] and len(draws[0]) == 12
    greedy = Sampling(max_new_tokens=8, temperature=0)
    assert sample(model, prompt, greedy) == sample(model, prompt, Sampling(8, 0, None, seed=99))  # no draws at all
    top1 = sample(model, prompt, Sampling(max_new_tokens=8, top_k=1, seed=5))
    assert top1 == sample(model, prompt, greedy)  # top_k=1 is greedy
    # from end-of-text: the text of the 4 tokens drawn after it, as the tokenizer decodes them
    from_eot = complete(model, tokenizer, "", Sampling(max_new_tokens=4, seed=7))
    from peerlab.data.tokenizer import eot_id

    drawn = sample(model, [eot_id(tokenizer)], Sampling(max_new_tokens=4, seed=7), stop=eot_id(tokenizer))
    assert len(drawn) <= 4 and from_eot == tokenizer.decode(drawn) and from_eot != complete(
        model, tokenizer, "The history of", Sampling(max_new_tokens=4, seed=7))


def test_generate_py_prints_the_continuation(tiny_run, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "generate.py"), f"ckpt={tiny_run['checkpoints']['last']}",
                           "prompt=The history of", "max_new_tokens=10", "seed=3"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("The history of") and len(proc.stdout) > len("The history of")
    assert list(tmp_path.iterdir()) == []  # writes nothing


@pytest.mark.parametrize("args,expected", [
    ([], "error: ckpt: missing"),
    (["ckpt=/no/such.ckpt"], "error: ckpt='/no/such.ckpt': no such checkpoint file"),
    (["ckpt=x.ckpt", "max_new_tokens=0"], "error: max_new_tokens=0: must be an integer >= 1"),
    (["ckpt=x.ckpt", "temperature=-1"], "error: temperature=-1: must be a number >= 0"),
    (["ckpt=x.ckpt", "top_k=0"], "error: top_k=0: must be an integer >= 1, or null"),
    (["ckpt=x.ckpt", "seed=abc"], "error: seed='abc': must be an integer"),
    (["ckpt=x.ckpt", "tempreature=1"], "error: tempreature=1: unknown key of generate.py"),
    (["ckpt=x.ckpt", "+tempreature=1"], "error: tempreature=1: unknown key of generate.py"),
])
def test_generate_mistakes_are_one_line(tmp_path, entry, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = entry("generate.py", *args)
    assert code == 2 and err.startswith(expected), err
    assert len(err.strip().splitlines()) == 1
