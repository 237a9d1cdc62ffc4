"""``eval.py``: perplexity of checkpoints on evaluation sets, written as a Table-1-style markdown and CSV.

Perplexity is token-level: each set's documents are tokenized with the checkpoint's own tokenizer, joined with the
end-of-text token (as in training), cut into non-overlapping blocks of the model's ``seq_len`` + 1 tokens, and
``exp(total negative log-likelihood / predicted tokens)`` is taken over all blocks (a final partial block is scored
too). Models run in eval mode (query BatchNorm uses running statistics).
"""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from peerlab.builders import build_corpus
from peerlab.checkpointing import load_checkpoint_dict
from peerlab.config import ConfigError, sci
from peerlab.data.corpora import encode_texts
from peerlab.data.tokenizer import tokenizer_hash
from peerlab.eval_sets import documents
from peerlab.lit_module import LanguageModel
from peerlab.saved_settings import rebuild


def load_checkpoint(path: str | Path) -> tuple[LanguageModel, Tokenizer]:
    """The model and tokenizer of a peerlab checkpoint, loaded as data only (never unpickling code)."""
    path = Path(path).expanduser()
    ckpt = load_checkpoint_dict(path, key="ckpt")
    module = rebuild(ckpt, key=f"ckpt={str(path)!r}")  # its saved settings are checked first: data, never code
    if not module.tokenizer_json:
        raise ConfigError(f"ckpt={str(path)!r}: the checkpoint carries no tokenizer (not written by peerlab?)")
    return module.eval(), Tokenizer.from_str(module.tokenizer_json)


def default_label(module: LanguageModel) -> str:
    cfg = module.run_config or {}
    layer = cfg.get("layer", {}).get("name", module.hparams["layer"].get("name", "?"))
    model = cfg.get("model", {}).get("name", module.hparams["model"].get("name", "?"))
    seed = cfg.get("seed") or 0  # seeds of one sweep point would otherwise share a row and overwrite each other
    return f"{layer} {model} {sci(module.hparams['budget'])}" + (f" seed {seed}" if seed else "")


# Beside results.json: for each row, the checkpoint it scores, and for each number the tokens it was computed on.
PROVENANCE = "provenance.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def row_label(label: str, ckpt: str, sources: dict) -> str:
    """Rows are keyed by checkpoint: a label that already names another checkpoint's row gains that checkpoint's run
    folder (then a hash of its path), so two checkpoints never merge into one row; the same checkpoint keeps its
    row."""
    path = str(Path(ckpt).expanduser().resolve())
    taken = lambda name: name in sources and sources[name].get("ckpt") != path  # noqa: E731
    if not taken(label):
        return label
    run = Path(path).parent.parent.name if Path(path).parent.name == "checkpoints" else Path(path).stem
    candidate = f"{label} ({run})"
    if taken(candidate):
        import hashlib

        candidate = f"{label} ({run} {hashlib.sha1(path.encode()).hexdigest()[:8]})"
    return candidate


def token_hash(tokens: np.ndarray, scored: int) -> str:
    """The tokens a perplexity was computed on (those scored and the first one before them)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(tokens[: scored + 1], dtype=np.int64).tobytes()).hexdigest()[:16]


def token_stream(tok: Tokenizer, texts) -> np.ndarray:
    parts = list(encode_texts(tok, texts))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def perplexity(module: LanguageModel, tokens: np.ndarray, batch_size: int = 8, max_tokens: int | None = None) -> dict:
    model = module.model
    seq_len = model.shape.seq_len
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise ValueError("evaluation set has fewer than 2 tokens")
    starts = list(range(0, len(tokens) - 1, seq_len))
    nll, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = [torch.from_numpy(tokens[s : s + seq_len + 1].astype(np.int64)) for s in starts[i : i + batch_size]]
        full = [c for c in chunk if len(c) == seq_len + 1]
        for group in ([torch.stack(full)] if full else []) + [c.unsqueeze(0) for c in chunk if len(c) != seq_len + 1]:
            x, y = group[:, :-1], group[:, 1:]
            logits = model(x)
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            count += y.numel()
    return {"ppl": math.exp(nll / count), "loss": nll / count, "tokens": count}


# The embedded corpus as configs/data/embedded.yaml defines it, for checkpoints trained on another corpus.
EMBEDDED_DATA = {"kind": "embedded", "name": "embedded", "sources": ["wikipedia", "lee"], "files": [], "val_fraction": 0.05}


@functools.lru_cache(maxsize=4)
def _embedded_val(data_json: str) -> tuple[tuple[str, str], ...]:
    """(source, text) of each validation document of an embedded corpus; cached, since checkpoints of one sweep
    share their corpus and reading it again for each is most of an evaluation's time."""
    corpus = build_corpus(json.loads(data_json))
    return tuple((d.source, d.text) for d in corpus.splits["val"])


def set_documents(name: str, spec: dict, module: LanguageModel, cache_dir: str | None, max_documents: int | None):
    """The documents of an evaluation set. ``embedded`` is the checkpoint's own validation split, and
    ``embedded:<source>`` (e.g. ``embedded:kjv``) its documents from one source."""
    if name == "embedded" or name.startswith("embedded:"):
        data = (module.run_config or {}).get("data") or EMBEDDED_DATA
        if data.get("kind", "embedded") != "embedded":
            data = EMBEDDED_DATA
        val = _embedded_val(json.dumps({k: data.get(k) for k in EMBEDDED_DATA}, sort_keys=True))
        if name == "embedded":
            return [text for _, text in val]
        source = name.partition(":")[2]
        texts = [text for s, text in val if s == source]
        if not texts:
            raise ConfigError(f"eval_sets: {name!r}: the checkpoint's validation split has no {source!r} documents; "
                              f"its sources: {', '.join(sorted({s for s, _ in val}))}")
        return texts
    return documents(name, spec, cache_dir, max_documents)


def c4_location(cfg: Any, module: LanguageModel) -> str | None:
    """C4's local folder: ``sets.c4.path``, or its synonym ``data.path`` (as train.py spells it), or else the
    ``data.path`` of the run that wrote the checkpoint, when it trained on C4; ``None`` = the HF hub."""
    given = cfg.sets.c4.get("path") if "c4" in cfg.sets else None
    alias = (cfg.get("data") or {}).get("path")
    if given and alias and str(given) != str(alias):
        raise ConfigError(f"data.path={alias!r}: a synonym of sets.c4.path, which is already {given!r}; give one of them")
    if given or alias:
        return str(given or alias)
    data = (module.run_config or {}).get("data") or {}
    if data.get("kind") == "c4" and data.get("path"):
        print(f"c4: the checkpoint's own data.path={data['path']}", flush=True)
        return str(data["path"])
    return None


def write_tables(out_dir: Path, table: dict[str, dict[str, float]]) -> None:
    sets = sorted({s for row in table.values() for s in row}, key=lambda s: (s != "embedded", s))
    (out_dir / "results.json").write_text(json.dumps(table, indent=2))
    with open(out_dir / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", *sets])
        for method, row in table.items():
            w.writerow([method, *[f"{row[s]:.4f}" if s in row else "" for s in sets]])
    lines = ["| Method | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[s]:.2f}" if s in row else "-" for s in sets) + " |")
    (out_dir / "table.md").write_text("Perplexity (lower is better); token-level, non-overlapping blocks.\n\n" + "\n".join(lines) + "\n")


def _positive_int(value: Any, key: str, none_ok: bool = False) -> None:
    ok = (value is None and none_ok) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    if not ok:
        raise ConfigError(f"{key}={value!r}: must be an integer >= 1" + (" or null (no cap)" if none_ok else ""))


def checkpoints(cfg: Any) -> list[str]:
    """The checkpoint paths ``ckpt`` names (one, or a list), checked for being there: one line otherwise."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt: missing; give ckpt=<a .ckpt file> (e.g. runs/<run>/checkpoints/last.ckpt) or a list")
    ckpts = list(cfg.ckpt) if OmegaConf.is_list(cfg.ckpt) or isinstance(cfg.ckpt, list) else [cfg.ckpt]
    if not ckpts:
        raise ConfigError("ckpt=[]: no checkpoint given; give ckpt=<a .ckpt file> or a list of them")
    for ckpt in ckpts:
        path = Path(str(ckpt)).expanduser()
        if path.is_dir():
            from peerlab.parallel.sharded_checkpoint import is_sharded

            hint = ("a sharded checkpoint of an FSDP run that did not finish: finish it (rerun its command), or consolidate "
                    f"it with python -m lightning.fabric.utilities.consolidate_checkpoint {path}") if is_sharded(path) else (
                    f"a folder, not a checkpoint file (a run's are in {path / 'checkpoints'})")
            raise ConfigError(f"ckpt={str(ckpt)!r}: {hint}")
    return [str(c) for c in ckpts]


def eval_set_names(cfg: Any) -> list[str]:
    """``eval_sets`` as a list: ``eval_sets=embedded`` (one name, no brackets) is that set, not its letters."""
    return [cfg.eval_sets] if isinstance(cfg.eval_sets, str) else [str(s) for s in cfg.eval_sets]


def validate_eval(cfg: Any) -> None:
    """eval.py's values, each refused in one line naming the key: the checkpoints, sizes and caps, the sets."""
    from peerlab.eval_sets import SETS

    checkpoints(cfg)
    _positive_int(cfg.batch_size, "batch_size")
    _positive_int(cfg.max_tokens, "max_tokens", none_ok=True)
    _positive_int(cfg.max_documents, "max_documents", none_ok=True)
    sets = eval_set_names(cfg)
    if not sets:
        raise ConfigError(f"eval_sets=[]: name at least one of {', '.join(SETS)} (or embedded:<source>)")
    for name in sets:
        if name not in SETS and not str(name).startswith("embedded:"):
            raise ConfigError(f"eval_sets: {name!r} is not an evaluation set; allowed: {', '.join(SETS)}, embedded:<source>")
    if not isinstance(cfg.wandb, bool):
        raise ConfigError(f"wandb={cfg.wandb!r}: must be true or false")
    from peerlab.config import output_problem

    problem = output_problem(cfg.out_dir)
    if problem:
        raise ConfigError(f"out_dir={cfg.out_dir!r}: {problem}")


def run_eval(cfg: Any) -> dict[str, dict[str, float]]:
    from omegaconf import OmegaConf

    validate_eval(cfg)
    ckpts = checkpoints(cfg)
    out_dir = Path(cfg.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _read_json(out_dir / "results.json")
    sources = _read_json(out_dir / PROVENANCE)
    for ckpt in ckpts:
        module, tok = load_checkpoint(ckpt)
        label = row_label((cfg.name if len(ckpts) == 1 and cfg.name else None) or default_label(module), ckpt, sources)
        row = table.setdefault(label, {})
        source = sources.setdefault(label, {"ckpt": str(Path(ckpt).expanduser().resolve()), "sets": {}})
        for name in eval_set_names(cfg):
            spec = OmegaConf.to_container(cfg.sets.get(name, {})) if name in cfg.sets else {}
            if name == "c4":
                spec["path"] = c4_location(cfg, module)
            tokens = token_stream(tok, set_documents(name, spec, module, cfg.get("hf_cache_dir"), cfg.get("max_documents")))
            result = perplexity(module, tokens, cfg.batch_size, cfg.get("max_tokens"))
            row[name] = result["ppl"]
            source["sets"][name] = {"tokens": result["tokens"], "tokens_sha256": token_hash(tokens, result["tokens"]),
                                    "tokenizer": tokenizer_hash(tok)}
            print(f"{label:>28s}  {name:>10s}: ppl {result['ppl']:.3f} over {result['tokens']} tokens", flush=True)
        write_tables(out_dir, table)
        (out_dir / PROVENANCE).write_text(json.dumps(sources, indent=2))
        if cfg.get("wandb"):
            _log_wandb(ckpt, label, row)
    print(f"wrote {out_dir / 'table.md'} and table.csv")
    return table


def _log_wandb(ckpt: str, label: str, row: dict[str, float]) -> None:
    """Add the perplexities to the checkpoint's own W&B run: the summary gets ``eval/<set>/ppl``, the history a
    table one row past the run's last step."""
    log_table_to_run(ckpt, "eval/table", ["method", *row], [[label, *row.values()]],
                     summary={f"eval/{k}/ppl": v for k, v in row.items()})


def log_table_to_run(ckpt: str, key: str, columns: list[str], rows: list[list], summary: dict | None = None) -> None:
    """Log a table (and ``summary`` values) into the checkpoint's own W&B run, in its project (offline unless an API
    key is configured), one row past the run's last logged step."""
    import wandb

    from peerlab.loggers import last_logged_step, run_folders, sync_command, wandb_mode, wandb_settings

    run_dir = Path(ckpt).expanduser().resolve().parents[1]
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    try:
        wandb_cfg = json.loads((run_dir / "results.json").read_text())["config"]["logger"]["wandb"]
    except (OSError, ValueError, KeyError, TypeError):
        wandb_cfg = {}
    mode = wandb_mode("auto")
    earlier = run_folders(run_dir, run_id) if run_id else []
    run = wandb.init(project=wandb_cfg.get("project") or "peerlab", entity=wandb_cfg.get("entity"), id=run_id,
                     resume="allow", dir=str(run_dir), mode=mode, settings=wandb_settings(mode))
    run.summary.update(summary or {})
    run.log({key: wandb.Table(columns=columns, data=rows)}, step=last_logged_step(earlier) + 1)
    offline = run.offline
    run.finish()
    if offline:
        print(f"W&B: offline; upload with: {sync_command(run_folders(run_dir, run.id))}", flush=True)
