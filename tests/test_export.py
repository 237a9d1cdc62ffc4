"""``python -m peerlab.export``: a checkpoint of every mixer becomes a Hugging Face folder that ``transformers`` loads
offline, with peerlab's logits and its tokenizer; ``generate(use_cache=True)`` draws what uncached decoding draws."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import ROOT
from tiny_checkpoint import LAYERS, SEQ, VOCAB, write_checkpoint


@pytest.fixture(scope="module", params=list(LAYERS))
def exported(request, tmp_path_factory):
    from peerlab.export import export

    root = tmp_path_factory.mktemp(f"export-{request.param}")
    write_checkpoint(root / "last.ckpt", request.param)
    return request.param, root / "last.ckpt", export(root / "last.ckpt", root / "hf")


def test_transformers_loads_the_folder_offline_with_peerlabs_logits(exported, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import peerlab
    import peerlab.hf  # noqa: F401  (registers model_type "peerlab")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    layer, ckpt, out = exported
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modeling_peerlab.py"} <= {
        p.name for p in out.iterdir()}
    ours, tokenizer = peerlab.load(ckpt)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    text = "the history of experts"
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (model(ids).logits - ours(ids)).abs().max().item()
    assert diff <= 1e-5, (layer, diff)
    print(f"{layer}: max |logit difference| {diff:.1e}")


def test_generate_with_the_cache_draws_what_it_draws_without(exported):
    from transformers import AutoModelForCausalLM

    import peerlab.hf  # noqa: F401

    _, _, out = exported
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([[3, 14, 15, 9, 2], [7, 1, 8, 2, 8]])
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (2, 13) and torch.equal(cached, uncached)


def test_remote_code_loads_without_importing_peerlab_first(tmp_path):
    import subprocess

    from peerlab.export import export

    write_checkpoint(tmp_path / "last.ckpt", "peer")
    out = export(tmp_path / "last.ckpt", tmp_path / "hf")
    code = ("import sys; from transformers import AutoModelForCausalLM;"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True);"
            "assert 'peerlab.hf' in sys.modules; print(type(m).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert proc.returncode == 0 and proc.stdout.strip() == "PeerlabForCausalLM", proc.stderr[-2000:]


def test_a_folder_naming_code_outside_peerlab_is_refused(tmp_path):
    from transformers import AutoModelForCausalLM

    import peerlab.hf  # noqa: F401
    from peerlab.config import ConfigError
    from peerlab.export import export

    write_checkpoint(tmp_path / "last.ckpt", "ffw")
    out = export(tmp_path / "last.ckpt", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config["peerlab"]["layer"]["_target_"] = "os.system"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config.json: peerlab: hyper_parameters.layer._target_='os.system': not a peerlab mixer"):
        AutoModelForCausalLM.from_pretrained(out)


def test_mistakes_are_one_line(tmp_path, entry):
    write_checkpoint(tmp_path / "last.ckpt", "ffw")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, message in (((f"ckpt={tmp_path / 'last.ckpt'}",), "out: required"),
                          (("ckpt=a", "out=b", "oops=1"), "oops: not a key of python -m peerlab.export"),
                          ((f"ckpt={tmp_path / 'none.ckpt'}", f"out={tmp_path / 'o'}"), "none.ckpt"),
                          ((f"ckpt={tmp_path / 'last.ckpt'}", f"out={tmp_path / 'full'}"), "exists and is not empty")):
        code, _, err = entry("src/peerlab/export.py", *args)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    from peerlab.config import ConfigError
    from peerlab.export import export

    write_checkpoint(tmp_path / "last.ckpt", "ffw")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[hf\]'"):
        export(tmp_path / "last.ckpt", tmp_path / "hf")


def test_the_hf_extra_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'hf = ["transformers' in text and "safetensors" in text
