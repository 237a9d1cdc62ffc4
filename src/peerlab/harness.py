"""EleutherAI's lm-evaluation-harness on a checkpoint: ``python -m peerlab.harness ckpt=<path> tasks=a,b``.

The harness's own tasks and metrics score peerlab's own model through an ``lm_eval`` ``LM`` subclass
(:class:`PeerlabLM`, as Meta's memory-layers code evaluates in-process): log-likelihoods from one forward pass per
request, generation with peerlab's KV cache and the task's stop strings. Results go to ``<out_dir>/results.json``
(the harness's own ``results``, ``versions``, ``n-shot`` and ``configs``, and what was scored), a markdown table
``<out_dir>/harness.md``, and, with ``wandb=true``, the checkpoint's own W&B run (as ``eval.py``'s perplexities).

    python -m peerlab.harness ckpt=runs/x/checkpoints/last.ckpt tasks=hellaswag,piqa,arc_easy,lambada_openai
    python -m peerlab.harness ckpt=... tasks=my_task include_path=my_tasks/ limit=100 out_dir=harness/

This is not the paper's evaluation: the paper reports perplexity on held-out text (``eval.py``), this scores
downstream tasks (zero-shot unless ``num_fewshot``). Tasks whose data is on the Hugging Face hub need a network (or
the datasets cache); without one they are refused in one line. A task of your own needs only local files: a YAML
with ``dataset_path: json`` and ``dataset_kwargs.data_files``, in a folder given as ``include_path``
(``tests/harness_tasks`` has two). Needs the ``eval`` extra (``pip install -e '.[eval]'``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from peerlab.config import ConfigError
from peerlab.errors import missing_extra

try:
    from lm_eval.api.model import LM
except ImportError as exc:  # without the eval extra
    raise missing_extra("eval", "lm-eval") from exc


class PeerlabLM(LM):
    """peerlab's model and tokenizer behind the harness's three request types. One request at a time: each
    sequence's log-likelihood is that of one full forward pass, exactly what peerlab's own forward gives."""

    def __init__(self, model, tokenizer, max_gen_toks: int = 256) -> None:
        from peerlab.data.tokenizer import eot_id

        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.eot = eot_id(tokenizer)
        self.seq_len = model.shape.seq_len
        self.max_gen_toks = max_gen_toks

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokens of context and continuation as the harness's HFLM splits them: trailing spaces of the context move
        to the continuation, and the whole text is tokenized at once so that merges across the join are kept."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return (ctx or [self.eot]), whole[len(ctx):]

    @torch.no_grad()
    def continuation_logprobs(self, ctx: list[int], cont: list[int]) -> tuple[torch.Tensor, bool]:
        """Log-probability of each continuation token after the context (the last ``seq_len`` tokens of the two), and
        whether greedy decoding would produce the continuation."""
        tokens = (ctx + cont)[-(self.seq_len + 1):]
        logits = self.model(torch.tensor([tokens[:-1]]))[0, -len(cont):].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont)
        return logprobs.gather(-1, target[:, None])[:, 0], bool((logprobs.argmax(-1) == target).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            ctx, cont = self.pair(context, continuation)
            if not cont:
                raise ConfigError(f"continuation {continuation!r} has no tokens after context {context[-40:]!r}")
            logprobs, greedy = self.continuation_logprobs(ctx, cont)
            out.append((logprobs.sum().item(), greedy))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        """A whole text's log-likelihood, in windows of ``seq_len`` tokens predicted each from up to ``seq_len``
        preceding ones (the first from the end-of-text token)."""
        out = []
        for request in requests:
            tokens = [self.eot, *self.encode(request.args[0])]
            total = 0.0
            for start in range(1, len(tokens), self.seq_len):
                end = min(start + self.seq_len, len(tokens))
                context = tokens[max(0, end - 1 - self.seq_len):start]
                total += self.continuation_logprobs(context, tokens[start:end])[0].sum().item()
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        from peerlab.generate import Sampling, complete

        out = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            if kwargs.get("do_sample") or kwargs.get("temperature", 0) not in (0, 0.0, None):
                raise ConfigError("peerlab.harness generates greedily; this task asks for sampling")
            sampling = Sampling(max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)), temperature=0)
            # complete() ends the text before the first stop string, the harness's convention
            out.append(complete(self.model, self.tokenizer, context, sampling, stop=until, cache=True))
        return out


def task_manager(tasks: list[str], include_path: str | None):
    """The harness's index of tasks: the folder's alone when it holds every task asked for (indexing the harness's
    thousands of task files takes seconds), else the harness's with the folder's."""
    from lm_eval.tasks import TaskManager

    if include_path:
        own = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(own.all_tasks):
            return own
        return TaskManager(include_path=include_path)
    return TaskManager()


def task_dict(tasks: list[str], include_path: str | None, manager=None):
    """The harness's tasks, loaded; a task it does not know, or whose data cannot be had (no network), is refused in
    one line naming it."""
    from lm_eval.tasks import get_task_dict

    manager = manager or task_manager(tasks, include_path)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            raise ConfigError(f"tasks={task!r}: the harness knows no such task"
                              + ("" if include_path else "; a task of your own needs include_path=<folder of YAMLs>"))
    loaded = {}
    for task in tasks:
        try:
            loaded.update(get_task_dict([task], manager))
        except Exception as exc:  # datasets raises many kinds; what matters is which task and why, in one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"tasks={task!r}: its data could not be loaded ({type(exc).__name__}: {reason[:200]}); "
                              "tasks on the Hugging Face hub need a network or the datasets cache (HF_HOME), or use "
                              "a local task with include_path=") from exc
    return loaded


def markdown(results: dict, label: str) -> str:
    """One row per task and metric, beside each its standard error when the harness gives one."""
    lines = [f"Tasks scored by lm-evaluation-harness on {label} (`python -m peerlab.harness`):", "",
             "| task | metric | value | stderr | samples |", "|---|---|---|---|---|"]
    for task, metrics in sorted(results["results"].items()):
        n = results.get("n-samples", {}).get(task, {}).get("effective", "")
        for key, value in sorted(metrics.items()):
            if key in ("alias", "sample_len") or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric, _, filt = key.partition(",")
            err = metrics.get(f"{metric}_stderr,{filt}")
            err_text = f"{err:.4f}" if isinstance(err, int | float) else "-"
            lines.append(f"| {task} | {metric}{'' if filt in ('', 'none') else f' ({filt})'} | {value:.4f} | "
                         f"{err_text} | {n} |")
    return "\n".join(lines) + "\n"


def evaluate(ckpt: str, tasks: list[str], out_dir: Path, limit: float | None = None, include_path: str | None = None,
             num_fewshot: int | None = None, wandb: bool = False) -> dict:
    """Score ``ckpt`` on ``tasks``; write results.json and harness.md into ``out_dir``; returns the harness's
    results (``results``, ``versions``, ``n-shot``, ``n-samples``, ``configs``)."""
    import lm_eval

    import peerlab
    from peerlab.evaluate import default_label, load_checkpoint

    module, tokenizer = load_checkpoint(ckpt)
    model = module.model.eval()
    loaded = task_dict(tasks, include_path)
    raw = lm_eval.simple_evaluate(model=PeerlabLM(model, tokenizer), tasks=list(loaded.values()), limit=limit,
                                  num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=1000)
    keep = {k: raw[k] for k in ("results", "versions", "n-shot", "n-samples", "higher_is_better") if k in raw}
    keep["configs"] = json.loads(json.dumps(raw.get("configs", {}), default=str))
    label = default_label(module)
    record = {"ckpt": str(ckpt), "label": label, "tasks": tasks, "limit": limit, "num_fewshot": num_fewshot,
              "include_path": include_path, "peerlab": peerlab.__version__, "lm_eval": _version("lm_eval"), **keep}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (out_dir / "harness.md").write_text(markdown(keep, label))
    if wandb:
        _log_wandb(ckpt, label, keep)
    return record


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package.replace("_", "-"))


def _log_wandb(ckpt: str, label: str, results: dict) -> None:
    """The scores as a table in the checkpoint's own W&B run (as eval.py's perplexities; offline unless a key is
    set)."""
    from peerlab.evaluate import log_table_to_run

    rows = [[task, key.partition(",")[0], value] for task, metrics in results["results"].items()
            for key, value in metrics.items() if isinstance(value, int | float) and "_stderr" not in key]
    log_table_to_run(ckpt, "eval/harness", ["task", "metric", "value"], rows)


ARGS = {"ckpt": "a peerlab checkpoint", "tasks": "comma-separated harness task names",
        "limit": "at most this many documents per task (or a fraction < 1)", "include_path": "a folder of task YAMLs",
        "num_fewshot": "few-shot examples per prompt (default: the task's)", "out_dir": "where results go (default: "
        "harness/ beside the checkpoint's run folder)", "wandb": "true: add the scores to the checkpoint's W&B run"}


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import fail, key_values
    from peerlab.errors import USER_ERRORS

    args = key_values(sys.argv[1:] if argv is None else argv, ARGS, ("ckpt", "tasks"), "python -m peerlab.harness",
                      "lm-evaluation-harness tasks on a checkpoint (docs/export-and-harness.md).")
    try:
        limit = float(args["limit"]) if args.get("limit") else None
        limit = int(limit) if limit is not None and limit >= 1 else limit
        shots = int(args["num_fewshot"]) if args.get("num_fewshot") else None
    except ValueError:
        fail(f"limit={args.get('limit')!r} / num_fewshot={args.get('num_fewshot')!r}: must be numbers")
    if limit is not None and limit <= 0:
        fail(f"limit={args['limit']}: must be > 0")
    if args.get("wandb", "false") not in ("true", "false"):
        fail(f"wandb={args['wandb']!r}: must be true or false")
    include = args.get("include_path")
    if include and not Path(include).is_dir():
        fail(f"include_path={include!r}: not a folder")
    ckpt = Path(args["ckpt"]).expanduser()
    out_dir = Path(args.get("out_dir") or ckpt.parent.parent / "harness").expanduser()
    tasks = [t.strip() for t in args["tasks"].split(",") if t.strip()]
    try:
        record = evaluate(str(ckpt), tasks, out_dir, limit, include, shots, args.get("wandb") == "true")
    except USER_ERRORS as exc:
        fail(str(exc))
    print(markdown(record, record["label"]))
    print(f"results: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
