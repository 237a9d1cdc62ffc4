"""Typed schema of the training config, custom resolvers, and the checks that run before any work starts.

The schema is registered in Hydra's ConfigStore as ``train_schema`` and is the first entry of ``train.yaml``'s
defaults, so a mistyped value (``budget=abc``) fails while Hydra composes, naming its ``full_key``. Range and
cross-field checks that a type cannot express live in :func:`validate`, each failing with one line that names the
key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the Hydra config groups (configs/ at the repo root)

# Keys added after runs were made, each with the value that reproduces what runs without it did. A saved config
# (run_config.yaml, results.json) that lacks one holds that value: interrupted runs of older code resume, and
# analyses read their value.
ADDED_KEYS = {"optim.groups.product_keys": {}, "data.train_fraction": 1.0, "trainer.matmul_precision": "auto",
              # memory settings that leave results as they were: the loss's chunks start above the 8192 tokens per
              # micro-batch that every run before them had at most
              "trainer.activation_checkpointing": False, "trainer.loss_chunk_tokens": 8192,
              "trainer.check_memory": True, "trainer.memory_parallel": 1, "data.sequences_per_step": None}


class ConfigError(ValueError):
    """A bad user-facing config value; its message is the one line the user sees."""


def sci(value: float) -> str:
    """``3e13`` for 3e13: compact, exact scientific notation for run names (``1.5e+19`` -> ``1.5e19``)."""
    mantissa, exponent = f"{float(value):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def human_count(x: float) -> str:
    """134k, 12.3M, 1.27B: a count (parameters) at any scale."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


# A float override as Hydra's sweeper writes it back when it parsed the value from a sweep file: 2e19 comes back as
# "2e+19" and 1e12 as "1000000000000.0". Small values (lr=0.002, 1e-05) are left as they are.
_SWEPT_FLOAT = re.compile(r"(?<==)(\d+(?:\.\d*)?e\+\d+|\d{7,}\.0)(?=,|$)")


def written_as(overrides: str) -> str:
    """Overrides with swept budgets as a user writes them (``budget=2e19``, not ``budget=2e+19``)."""
    return _SWEPT_FLOAT.sub(lambda m: sci(float(m[0])), overrides)


def sweep_subdir(override_dirname: str, sweep_dir: str) -> str:
    """A grid point's folder: Hydra's ``override_dirname`` with swept budgets as written (``budget=1e12``, not
    ``budget=1000000000000.0``). A sweep that already holds the long name keeps resuming into it."""
    short = _fit_name(written_as(override_dirname))
    if short != override_dirname and _is_dir(Path(sweep_dir) / override_dirname) and not _is_dir(Path(sweep_dir) / short):
        return override_dirname
    return short


def _fit_name(name: str, limit: int = 255) -> str:
    """A folder name within the file system's 255 bytes: a longer one keeps its start and gains a hash of all."""
    if len(name.encode()) <= limit:
        return name
    import hashlib

    return name.encode()[: limit - 17].decode(errors="ignore") + "-" + hashlib.sha1(name.encode()).hexdigest()[:16]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long to exist
        return False


# Keys that do not change what is trained: a rerun may differ in these and still resume the same run (peerlab.run_folder).
# trainer.memory_parallel: how the tables are laid out over the ranks, not what is trained (a run resumes at another)
NON_IDENTITY_KEYS = ("resume", "logger", "out_dir", "run_name", "trainer.memory_parallel")
# Overrides a sweep's name leaves out: those keys, Hydra's own, and settings of how a run shows and loads its data.
SWEEP_NAME_IGNORES = ("hydra.", "hydra/", *(f"{k}{sep}" for k in NON_IDENTITY_KEYS for sep in "=."),
                      "trainer.progress_bar=", "data.cache_dir=", "data.num_workers=")


def sweep_name(overrides: list[str] | None = None) -> str:
    """A plain ``-m`` sweep's folder name, from its overrides as typed: rerunning the same command finds the same
    folder, so finished points are skipped, interrupted ones resume and the rest start (a sweep file names its own
    folder). The name is the overrides, sorted and made safe for a path, and a hash of them all, so two sweeps never
    share a folder by accident. Without overrides to read: a time stamp, as Hydra's default."""
    import hashlib

    if overrides is None:
        return time.strftime("%Y-%m-%d_%H-%M-%S")
    kept = sorted(written_as(o) for o in overrides if not o.lstrip("+~").startswith(SWEEP_NAME_IGNORES))
    if not kept:
        return "defaults"
    joined = "__".join(kept)
    readable = joined.replace(os.sep, "%")
    digest = hashlib.sha1(joined.encode()).hexdigest()[:8]
    return readable.encode()[:80].decode(errors="ignore") + "-" + digest


def register_resolvers() -> None:
    for name, fn in (("sci", sci), ("sweep_subdir", sweep_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("sweep_name"):
        # cached: a job (another process under joblib or SLURM) gets the master's value with Hydra's copied cache
        # (keyed by the argument's text, ${hydra.overrides.task}, which a job's own overrides do not change)
        OmegaConf.register_new_resolver("sweep_name", lambda task=None: sweep_name(None if task is None else list(task)),
                                        use_cache=True)


@dataclass
class ModelConfig:
    name: str = MISSING
    depth: int = MISSING  # the size dial: width and heads derive from it
    aspect_ratio: int = 64  # d_model = depth * aspect_ratio unless d_model is set
    head_dim: int = 64
    d_model: int | None = None
    ffw_mult: float = 4.0
    activation: str = "gelu"
    sparse_blocks: Any = "middle"


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    groups: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    val_every_steps: int = 100
    val_batches: int = 20  # batches per periodic validation; the final one uses the whole split
    log_every_steps: int = 10
    ckpt_every_steps: int = 200
    ckpt_every_minutes: float = 10.0  # also refresh last.ckpt this often (0 disables); SIGTERM always saves
    progress_bar: bool = True
    deterministic: bool = False
    matmul_precision: str = "auto"  # float32 matmuls: auto = "high" (TF32) on CUDA unless set in torch already
    activation_checkpointing: bool = False  # recompute each block in backward: its input is all it keeps
    loss_chunk_tokens: int = 8192  # the LM head's loss this many tokens at a time (0: the whole micro-batch)
    check_memory: bool = True  # on CUDA, refuse a run whose planned peak exceeds the GPU (peerlab.parallel.plan)
    memory_parallel: Any = 1  # trainer=fsdp: split the expert tables by columns over groups of this many ranks; auto


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "peerlab"
    entity: str | None = None
    mode: str = "auto"  # auto: online with an API key, else offline
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    layer: Any = MISSING
    data: Any = MISSING
    tokenizer: Any = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    budget: float = 3e13
    seed: int = 0
    min_steps: int = 20
    out_dir: str = "runs"
    run_name: str = MISSING
    resume: bool = True


def register_schema() -> None:
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


# ------------------------------------------------------------------------------------------------ checks

MATMUL_PRECISIONS = ("auto", "highest", "high", "medium")
# Lightning's precision settings that peerlab trains with (the schema, the strategies and the memory model read this
# one list), and the short names Lightning accepts for them. Lightning's true 16-bit settings (bf16-true, 16-true)
# keep AdamW's moments and the weights' updates in 16 bits, and transformer-engine needs its own layers: neither is
# something peerlab trains or plans, so both are refused before any work.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
FSDP_PRECISIONS = ("32-true", "bf16-mixed")  # FSDP2 under ModelParallelStrategy: 16-mixed needs a sharded scaler


ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
STRATEGIES = ("auto", "ddp", "fsdp")


def precision_name(value: Any) -> str:
    """The canonical name of a ``trainer.precision`` value (``bf16`` -> ``bf16-mixed``, ``32`` -> ``32-true``)."""
    return PRECISION_ALIASES.get(str(value), str(value))


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def model_dims(model: DictConfig | dict) -> tuple[int, int, int]:
    """``(d_model, n_layer, n_head)`` from the size dial."""
    depth = model["depth"]
    d_model = model.get("d_model") or depth * model["aspect_ratio"]
    return d_model, depth, max(1, d_model // model["head_dim"])


def validate_model(m: DictConfig, prefix: str = "") -> None:
    """The ``model`` node's ranges (``prefix`` goes before each key named in an error)."""
    _require(m.depth >= 1, f"{prefix}model.depth", m.depth, "must be an integer >= 1")
    _require(m.aspect_ratio >= 1, f"{prefix}model.aspect_ratio", m.aspect_ratio, "must be an integer >= 1")
    _require(m.head_dim >= 1, f"{prefix}model.head_dim", m.head_dim, "must be an integer >= 1")
    _require(m.d_model is None or m.d_model >= 1, f"{prefix}model.d_model", m.d_model, "must be null (derived) or >= 1")
    d_model, _, n_head = model_dims(m)
    _require(d_model % m.head_dim == 0, f"{prefix}model.head_dim", m.head_dim, f"must divide d_model={d_model}")
    _require(m.ffw_mult > 0, f"{prefix}model.ffw_mult", m.ffw_mult, "must be > 0")
    sb = m.sparse_blocks
    if isinstance(sb, ListConfig):
        sb = list(sb)
    ok = sb in ("middle", "all", "none") or (isinstance(sb, list) and all(_is_int(i) and 0 <= i < m.depth for i in sb))
    _require(ok, f"{prefix}model.sparse_blocks", sb, f"allowed: 'middle', 'all', 'none' or a list of block indices in [0, {m.depth})")


def validate_optim(o: DictConfig, prefix: str = "") -> None:
    """The ``optim`` node's ranges (``prefix`` goes before each key named in an error)."""
    _require(o.name in ("adamw",), f"{prefix}optim.name", o.name, "allowed: 'adamw'")
    _require(o.lr > 0, f"{prefix}optim.lr", o.lr, "must be > 0")
    _require(o.weight_decay >= 0, f"{prefix}optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(0 <= o.warmup_fraction < 1, f"{prefix}optim.warmup_fraction", o.warmup_fraction, "must be in [0, 1)")
    _require(0 <= o.min_lr_ratio <= 1, f"{prefix}optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    _require(o.grad_clip >= 0, f"{prefix}optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables clipping)")
    betas = list(o.betas) if OmegaConf.is_list(o.betas) or isinstance(o.betas, list | tuple) else o.betas
    _require(isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, float | int) and not isinstance(b, bool)
                                                                  and 0 <= b < 1 for b in betas),
             f"{prefix}optim.betas", betas, "must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    _require(o.eps > 0, f"{prefix}optim.eps", o.eps, "must be > 0")


# Keys of every data option (configs/data/*.yaml) and of the tokenizer: the nodes the schema leaves open.
DATA_KEYS = ("name", "kind", "sources", "files", "val_fraction", "train_fraction", "seq_len", "batch_size",
             "num_workers", "cache_dir", "path", "train_shards", "val_shards", "max_documents", "text_field",
             "num_proc", "hf_cache_dir", "sequences_per_step")
TOKENIZER_KEYS = ("kind", "vocab_size")


def _known_keys(node: Any, allowed: tuple[str, ...] | list[str], where: str, what: str) -> None:
    """Refuse a key no option of the node has (``+key=...`` would otherwise add it, and train nothing different)."""
    if not isinstance(node, DictConfig):
        return
    for key in node:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            shown = sorted(k for k in allowed if k != "hydra")
            raise ConfigError(f"{full}: not a key of {what}; allowed: {', '.join(shown)}")


def check_known_keys(cfg: DictConfig) -> None:
    """Every key of a training config is one the code reads: the schema's, a data option's, the tokenizer's, and
    for ``layer`` the chosen mixer's constructor arguments."""
    import dataclasses
    import inspect

    fields = lambda cls: [f.name for f in dataclasses.fields(cls)]  # noqa: E731
    _known_keys(cfg, [*fields(TrainConfig), "hydra"], "", "train.py's config")
    for name, schema in (("model", ModelConfig), ("optim", OptimConfig), ("trainer", TrainerConfig)):
        _known_keys(cfg.get(name), fields(schema), name, f"the {name} group")
    _known_keys(cfg.get("logger"), fields(LoggerConfig), "logger", "the logger group")
    _known_keys(cfg.logger.get("wandb") if isinstance(cfg.get("logger"), DictConfig) else None, fields(WandbConfig),
                "logger.wandb", "logger.wandb")
    _known_keys(cfg.get("data"), DATA_KEYS, "data", "any data option (configs/data)")
    _known_keys(cfg.get("tokenizer"), TOKENIZER_KEYS, "tokenizer", "the tokenizer group")
    layer = cfg.get("layer")
    if isinstance(layer, DictConfig) and isinstance(layer.get("_target_"), str):
        from peerlab.mixers import REGISTRY

        cls = REGISTRY.get(layer._target_)
        if cls is not None:
            accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "d_model", "n_layer"}
            _known_keys(layer, sorted(accepted | {"name", "_target_"}), "layer", f"layer={layer.get('name')} ({cls.__name__})")


def validate(cfg: DictConfig) -> None:
    """Range and cross-field checks; raises :class:`ConfigError` with one line naming the key."""
    check_known_keys(cfg)
    b = cfg.budget
    _require(isinstance(b, float | int) and math.isfinite(b) and b > 0, "budget", b, "must be a positive number of FLOPs, e.g. 3e13")
    _require(_is_int(cfg.min_steps) and cfg.min_steps >= 1, "min_steps", cfg.min_steps, "must be an integer >= 1")

    validate_model(cfg.model)
    from peerlab.mixers.activations import ACTIVATIONS

    for key, node in (("model.activation", cfg.model), ("layer.activation", cfg.get("layer"))):
        if isinstance(node, DictConfig) and "activation" in node:
            _require(node.activation in ACTIVATIONS, key, node.activation, f"allowed: {', '.join(ACTIVATIONS)}")

    _require(isinstance(cfg.layer, DictConfig) and "_target_" in cfg.layer, "layer", cfg.layer, "must be a config group option with a _target_ (layer=ffw|moe|pkm|peer)")

    d = cfg.data
    _require(_is_int(d.get("seq_len")) and d.get("seq_len") >= 1, "data.seq_len", d.get("seq_len"), "must be an integer >= 1")
    _require((_is_int(d.get("batch_size")) and d.get("batch_size") >= 1) or d.get("batch_size") == "auto", "data.batch_size",
             d.get("batch_size"), "must be an integer >= 1 (sequences per process per forward pass) or auto (the largest "
             "that fits, with data.sequences_per_step)")
    steps = d.get("sequences_per_step")
    _require(steps is None or (_is_int(steps) and steps >= 1), "data.sequences_per_step", steps,
             "must be an integer >= 1 (sequences per optimizer step over all processes) or null")
    _require(d.get("batch_size") != "auto" or steps is not None, "data.batch_size", "auto",
             "needs data.sequences_per_step: the sequences of one optimizer step over all processes (the paper's: 128)")
    _require(d.get("kind", "embedded") in ("embedded", "c4"), "data.kind", d.get("kind"), "allowed: embedded, c4")
    tf = d.get("train_fraction", 1.0)
    _require(isinstance(tf, float | int) and not isinstance(tf, bool) and 0 < tf <= 1, "data.train_fraction", tf,
             "must be a number in (0, 1]: the share of training blocks used")
    if d.get("kind", "embedded") == "embedded":
        _require(isinstance(d.get("val_fraction"), float) and 0 < d.val_fraction < 1, "data.val_fraction", d.get("val_fraction"), "must be in (0, 1)")
        if isinstance(d.get("files"), str):  # data.files=/path/a.txt without brackets: one file, not its characters
            d.files = [d.files]
        for f in d.get("files") or []:
            _require(Path(f).expanduser().is_file(), "data.files", f, "file does not exist")
        if not (d.get("sources") or d.get("files")):
            raise ConfigError("data.sources=[] and data.files=[]: give at least one source (wikipedia, lee) or a file")
    else:
        _require(d.get("path") is None or Path(d.path).expanduser().is_dir(), "data.path", d.get("path"), "is not a directory (null = the HF hub)")
        for key in ("train_shards", "val_shards"):
            _require(_is_int(d.get(key)) and d.get(key) >= 1, f"data.{key}", d.get(key), "must be an integer >= 1")

    t = cfg.tokenizer
    _require(t.get("kind") in ("bpe", "gpt2"), "tokenizer.kind", t.get("kind"), "allowed: 'bpe', 'gpt2'")
    if t.kind == "bpe":
        _require(_is_int(t.get("vocab_size")) and 258 <= t.vocab_size <= 1 << 20, "tokenizer.vocab_size", t.get("vocab_size"), "must be an integer in [258, 1048576]")

    validate_optim(cfg.optim)

    tr = cfg.trainer
    _require(tr.accelerator in ACCELERATORS, "trainer.accelerator", tr.accelerator, f"allowed: {', '.join(ACCELERATORS)}")
    if tr.accelerator in ("gpu", "cuda"):
        import torch

        _require(torch.cuda.is_available(), "trainer.accelerator", tr.accelerator,
                 "no GPU is visible here (torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto")
    impl = cfg.layer.get("impl") if isinstance(cfg.get("layer"), DictConfig) else None
    if impl == "triton" and not os.environ.get("TRITON_INTERPRET"):
        import torch

        on_cpu = tr.accelerator == "cpu" or not torch.cuda.is_available()
        _require(not on_cpu, "layer.impl", impl, "Triton's kernels run on CUDA GPUs and this run is on the CPU; use "
                 "layer.impl=chunked or auto (auto takes Triton on a GPU)")
    dev = tr.devices
    _require((_is_int(dev) and (dev >= 1 or dev == -1)) or dev == "auto" or OmegaConf.is_list(dev), "trainer.devices", dev,
             "must be an integer >= 1, -1 or auto (every visible GPU), or a list of GPU indices")
    for key in ("accumulate_grad_batches", "val_every_steps", "val_batches", "log_every_steps", "ckpt_every_steps", "num_nodes"):
        _require(tr[key] >= 1, f"trainer.{key}", tr[key], "must be an integer >= 1")
    _require(tr.get("strategy", "auto") in STRATEGIES, "trainer.strategy", tr.get("strategy"),
             f"allowed: {', '.join(STRATEGIES)} (trainer=ddp, trainer=fsdp)")
    _require(_is_int(tr.get("loss_chunk_tokens", 0)) and tr.get("loss_chunk_tokens", 0) >= 0, "trainer.loss_chunk_tokens",
             tr.get("loss_chunk_tokens"), "must be an integer >= 0 (0: the whole micro-batch at once)")
    precision = precision_name(tr.precision)
    _require(precision in PRECISIONS, "trainer.precision", tr.precision,
             f"allowed: {', '.join(PRECISIONS)} (or {', '.join(PRECISION_ALIASES)}); true 16-bit training is not supported")
    m = tr.get("memory_parallel", 1)
    _require((_is_int(m) and m >= 1) or m == "auto", "trainer.memory_parallel", m,
             "must be an integer >= 1 (1: tables whole on every rank) or auto (the size that moves fewest bytes)")
    _require(m in (1, "auto") or tr.get("strategy", "auto") == "fsdp", "trainer.memory_parallel", m,
             f"splits tables under trainer=fsdp only (trainer.strategy={tr.get('strategy', 'auto')!r} here)")
    if tr.get("strategy", "auto") == "fsdp":
        _require(precision in FSDP_PRECISIONS, "trainer.precision", tr.precision,
                 f"trainer=fsdp takes {', '.join(FSDP_PRECISIONS)}")
    _require(tr.ckpt_every_minutes >= 0, "trainer.ckpt_every_minutes", tr.ckpt_every_minutes, "must be >= 0 (0 disables)")
    _require(tr.get("matmul_precision", "auto") in MATMUL_PRECISIONS, "trainer.matmul_precision", tr.get("matmul_precision"),
             f"allowed: {', '.join(MATMUL_PRECISIONS)}")
    _require(cfg.logger.wandb.mode in ("auto", "online", "offline", "disabled"), "logger.wandb.mode", cfg.logger.wandb.mode, "allowed: auto, online, offline, disabled")

    problem = output_problem(cfg.out_dir)
    _require(problem is None, "out_dir", cfg.out_dir, problem or "")
    if not OmegaConf.is_missing(cfg, "run_name"):
        name = str(cfg.run_name)
        _require(all(len(part.encode()) <= 255 for part in Path(name).parts) and name not in ("", ".", ".."),
                 "run_name", name if len(name) < 80 else name[:77] + "...",
                 "must be a folder name of at most 255 bytes per path part")
        problem = output_problem(Path(str(cfg.out_dir)).expanduser() / name)
        _require(problem is None, "run_name", name, problem or "")


def output_problem(value: Any, file: bool = False) -> str | None:
    """Why ``value`` cannot be the output folder (``file``: the output file) an entry point writes, or None: a file
    where a folder should be (or above it), a folder it may not write in, a name the filesystem cannot hold."""
    out = Path(str(value)).expanduser()
    folder = out.parent if file else out
    try:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if file and out.is_dir():
            return "is a folder; give a file name"
        if not probe.is_dir():
            return "is a file, not a folder" if probe == folder else f"cannot be made: {probe} is a file"
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"is not writable ({probe})"
    except OSError as exc:  # e.g. a name longer than the filesystem's 255 bytes
        return f"cannot be used as a path ({exc.strerror or exc})"
    return None


# Every process that imports the config module can resolve run names and sweep folders: a SLURM job resolves
# hydra.sweep.subdir before train.py's own module code has run there.
register_resolvers()
