"""The one way to rebuild a model from settings saved in a file: a checkpoint's ``hyper_parameters``.

A checkpoint someone hands you is data, never code. Its pickle is already refused if it names code
(:mod:`peerlab.checkpointing`); its *settings* are refused here, before anything is built, if they could make us
run code or allocate what the file does not hold:

- ``layer._target_`` must be one of :data:`peerlab.mixers.REGISTRY`; no other node of ``model``, ``layer`` or
  ``optim`` (nor of the run config stored beside them) may hold a Hydra key (``_target_``, ``_args_``,
  ``_partial_``, ``_recursive_``, ``_convert_``), which ``hydra.utils.instantiate`` would act on;
- values go through the training config's schema and range checks (:mod:`peerlab.config`), the layer's keys
  must be its constructor's, and the model is then built on the meta device (no memory) and every tensor's shape
  compared with the checkpoint's own weights, so a size the file does not hold (``layer.n_experts=1e12``) is
  refused instead of allocated.

The user's own command line and config files are another matter: they compose and instantiate as Hydra does,
since they are the user's code (docs/data-and-evaluation.md, "Checkpoints are data").
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peerlab.builders import LAYER_META_KEYS, build_model
from peerlab.config import ConfigError, ModelConfig, OptimConfig, validate_model, validate_optim
from peerlab.mixers import REGISTRY
from peerlab.mixers.base import MixerConfigError

HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
HPARAMS = {"model": dict, "layer": dict, "optim": dict, "vocab_size": int, "seq_len": int, "tokens_per_step": int,
           "max_steps": int, "budget": float}
# The model itself passes these to every mixer; a saved layer config names the rest.
BUILT_IN_ARGS = {"d_model", "n_layer"}


def _hydra_keys(node: Any, path: str):
    """``(path, key)`` of every Hydra key below ``node``, lists included."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in HYDRA_KEYS:
                yield path, k
            yield from _hydra_keys(v, f"{path}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _hydra_keys(v, f"{path}[{i}]")


def _refuse_instantiation(node: Any, path: str, fail) -> None:
    for where, key in _hydra_keys(node, path):
        if (where, key) == ("hyper_parameters.layer", "_target_"):
            continue  # the mixer, checked against the registry
        fail(f"{where if key == '_target_' else f'{where}.{key}'}: a saved config may not instantiate anything")


def _typed(node: dict, schema: type, path: str, fail):
    """``node`` merged into its schema (types checked), as the training config would be."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        fail(f"{path}.{key}: {str(exc).splitlines()[0]}")


def check(hparams: Any, key: str, state_dict: dict[str, torch.Tensor] | None = None, run_config: Any = None) -> dict:
    """The checkpoint's ``hyper_parameters`` if a model may be rebuilt from them; raises :class:`ConfigError` with one
    line ``<key>: hyper_parameters.<path>: <why>`` otherwise. Nothing the file names is instantiated on the way."""

    def fail(message: str):
        raise ConfigError(f"{key}: {message}")

    if not isinstance(hparams, dict):
        fail("not a peerlab training checkpoint (no hyper_parameters)")
    for name, kind in HPARAMS.items():
        value = hparams.get(name)
        ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int))
        if not ok:
            fail(f"hyper_parameters.{name}={value!r}: must be a {kind.__name__}")
    extra = sorted(set(hparams) - set(HPARAMS))
    if extra:
        fail(f"hyper_parameters.{extra[0]}: not a key of a peerlab checkpoint; allowed: {', '.join(HPARAMS)}")
    for name in ("model", "layer", "optim"):
        _refuse_instantiation(hparams[name], f"hyper_parameters.{name}", fail)
    if isinstance(run_config, dict):
        _refuse_instantiation({k: v for k, v in run_config.items() if k != "layer"}, "peerlab_config", fail)
        _refuse_instantiation({k: v for k, v in (run_config.get("layer") or {}).items() if k != "_target_"},
                              "peerlab_config.layer", fail)

    layer = hparams["layer"]
    target = layer.get("_target_")
    cls = REGISTRY.get(target) if isinstance(target, str) else None
    if cls is None:
        fail(f"hyper_parameters.layer._target_={target!r}: not a peerlab mixer; allowed: {', '.join(sorted(REGISTRY))}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"} - BUILT_IN_ARGS
    for name in sorted(set(layer) - {*LAYER_META_KEYS, "_target_"}):
        if name not in accepted:
            fail(f"hyper_parameters.layer.{name}: not an argument of {target}; allowed: {', '.join(sorted(accepted))}")

    model_node = _typed(hparams["model"], ModelConfig, "hyper_parameters.model", fail)
    optim_node = _typed(hparams["optim"], OptimConfig, "hyper_parameters.optim", fail)
    try:
        validate_model(model_node, prefix="hyper_parameters.")
        validate_optim(optim_node, prefix="hyper_parameters.")
    except ConfigError as exc:
        fail(str(exc))
    for name in ("vocab_size", "seq_len", "tokens_per_step", "max_steps"):
        if hparams[name] < 1:
            fail(f"hyper_parameters.{name}={hparams[name]}: must be >= 1")
    if not (math.isfinite(hparams["budget"]) and hparams["budget"] > 0):
        fail(f"hyper_parameters.budget={hparams['budget']}: must be a positive number of FLOPs")

    _check_sizes(hparams, state_dict, fail)
    return hparams


def _check_sizes(hparams: dict, state_dict: dict | None, fail) -> None:
    """Build on the meta device and hold every shape against the checkpoint's weights."""
    try:
        with torch.device("meta"):
            model = build_model(hparams["model"], hparams["layer"], hparams["vocab_size"], hparams["seq_len"])
    except (MixerConfigError, ValueError, TypeError) as exc:
        fail(f"hyper_parameters.layer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if state_dict is None:
        return
    expected = {f"model.{name}": tuple(t.shape) for name, t in model.state_dict().items()}
    held = {name: tuple(t.shape) for name, t in state_dict.items() if isinstance(t, torch.Tensor)}
    for name, shape in expected.items():
        if held.get(name) != shape:
            size = sum(math.prod(s) for s in expected.values())
            fail(f"hyper_parameters describe {name} as {shape} ({size:.3g} values in all), but the checkpoint "
                 f"holds {held.get(name, 'no such tensor')}: the saved config does not match the saved weights")
    missing = sorted(set(held) - set(expected))
    if missing:
        fail(f"hyper_parameters describe no {missing[0]}, which the checkpoint holds: the saved config does not match "
             "the saved weights")


def rebuild(ckpt: dict, key: str):
    """A :class:`~peerlab.lit_module.LanguageModel` with the checkpoint's weights, after :func:`check`."""
    from peerlab.lit_module import LanguageModel

    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{key}: not a peerlab training checkpoint (no hyper_parameters/state_dict)")
    hparams = check(ckpt.get("hyper_parameters"), key, ckpt["state_dict"], ckpt.get("peerlab_config"))
    module = LanguageModel(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    return module
