"""peerlab's transformer as a Hugging Face ``transformers`` model: ``AutoModelForCausalLM`` loads an exported folder.

The model class holds peerlab's own :class:`~peerlab.model.Transformer`, built by :func:`peerlab.builders.build_model`
from the checkpoint's saved settings: no second copy of the architecture exists, in this file or in an export. The
settings travel in ``config.json`` (``peerlab``: the checkpoint's ``hyper_parameters``) and are checked on load as a
checkpoint's are (:func:`peerlab.saved_settings.check`): a folder is data, and a ``layer._target_`` outside peerlab's
mixers is refused. Importing this module registers the classes with ``AutoConfig`` and ``AutoModelForCausalLM``;
an exported folder also carries a three-line ``modeling_peerlab.py`` that imports them from the installed package,
so that ``from_pretrained(folder, trust_remote_code=True)`` works without importing peerlab first. Either way the
peerlab package must be installed: PEER, PKM and their successors are not layers ``transformers`` has.

Generation: ``generate(use_cache=True)`` keeps peerlab's own :class:`~peerlab.model.KVCache` in
``past_key_values`` and runs only the new tokens; for a model whose mixers do not act on each token alone (MoE's
expert choice) it recomputes the whole prefix, as ``use_cache=False`` does. Padding is not supported: every row of
a batch must be as long as the others (``attention_mask`` all ones).
"""

from __future__ import annotations

from typing import Any

import torch

from peerlab.errors import missing_extra

try:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as exc:  # without the hf extra
    raise missing_extra("hf", "transformers") from exc

MODEL_TYPE = "peerlab"


class PeerlabConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, peerlab: dict | None = None, **kwargs: Any) -> None:
        self.peerlab = peerlab or {}
        hp = self.peerlab
        shape = hp.get("model", {})
        for key, value in (("vocab_size", hp.get("vocab_size")), ("max_position_embeddings", hp.get("seq_len")),
                           ("num_hidden_layers", shape.get("depth")), ("hidden_size", shape.get("d_model"))):
            kwargs.setdefault(key, value)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)


class _Cache:
    """peerlab's :class:`~peerlab.model.KVCache` as ``past_key_values``: how many tokens it holds, for
    ``prepare_inputs_for_generation``."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.cache.lengths.max())


class PeerlabForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = PeerlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: PeerlabConfig) -> None:
        from peerlab.builders import build_model
        from peerlab.saved_settings import check

        super().__init__(config)
        hp = check(dict(config.peerlab), "config.json: peerlab")
        self.model = build_model(hp["model"], hp["layer"], hp["vocab_size"], hp["seq_len"])
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # the cache is peerlab's own (forward makes it)
        return False

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights come from the export; peerlab's own initialisation stands for a fresh model."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.tok_emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: _Cache | None = None, use_cache: bool | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        from peerlab.model import KVCache

        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("peerlab models take no padding: attention_mask must be all ones (one length per batch)")
        cache = None
        if use_cache and self.model.can_cache():
            cache = past_key_values.cache if past_key_values is not None else KVCache(self.model, input_ids.shape[0])
        elif past_key_values is not None:
            raise ValueError("past_key_values given to a model that cannot cache (MoE's expert choice)")
        logits = self.model(input_ids, cache=cache)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs; position t predicts t + 1
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      past_key_values=_Cache(cache) if cache is not None else None)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, past_key_values: _Cache | None = None,
                                      attention_mask: torch.Tensor | None = None, use_cache: bool | None = None,
                                      **kwargs: Any) -> dict:
        if past_key_values is not None:  # only the tokens the cache has not seen
            input_ids = input_ids[:, past_key_values.get_seq_length():]
        return {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": use_cache,
                "attention_mask": None}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict, is_encoder_decoder: bool = False,
                                            num_new_tokens: int = 1) -> dict:
        model_kwargs["past_key_values"] = outputs.past_key_values
        return model_kwargs


def register() -> None:
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know ``model_type: peerlab`` (done on import)."""
    try:
        AutoConfig.register(MODEL_TYPE, PeerlabConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(PeerlabConfig, PeerlabForCausalLM)
    except ValueError:
        pass


register()
