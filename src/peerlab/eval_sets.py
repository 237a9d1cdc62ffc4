"""The paper's evaluation sets (Table 1), each from the HF hub when online or a local file in its public format.

| set | hub (when online) | local file | text |
|---|---|---|---|
| ``embedded`` | - | - | the validation split of the checkpoint's own training corpus (offline) |
| ``c4`` | ``allenai/c4`` en, validation shard 0 | ``c4-validation.*.json.gz`` in ``path`` | ``text`` |
| ``wikitext`` | ``Salesforce/wikitext``, ``wikitext-103-raw-v1``, test | its ``test-*.parquet`` or ``wiki.test.raw`` | ``text`` lines, one stream |
| ``lambada`` | ``EleutherAI/lambada_openai``, test | ``.jsonl`` / ``.parquet`` | ``text`` (whole passages) |
| ``pile`` | - (no canonical hub copy) | ``val.jsonl`` or ``val.jsonl.zst`` | ``text`` |
| ``curation`` | - (release is URLs + scraping) | ``.jsonl`` / ``.csv`` / ``.parquet`` | ``text_field`` |

Each set yields documents (strings); WikiText is one document (the whole test set, as it is usually scored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peerlab.data.corpora import CorpusError

HUB = {
    "c4": ("json", None, "validation"),  # handled via hf:// shard addresses
    "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1", "test"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
}
SETS = ("embedded", "c4", "wikitext", "lambada", "pile", "curation")


def _builder(path: Path) -> str:
    name = path.name
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    return "text"


def _local(name: str, path: str, field: str, cache_dir: str | None) -> Any:
    from datasets import load_dataset

    p = Path(path).expanduser()
    files = sorted(str(f) for f in p.glob("c4-validation.*.json.gz")) if name == "c4" and p.is_dir() else [str(p)]
    if not files or not Path(files[0]).is_file():
        raise CorpusError(f"sets.{name}.path={path!r}: no such file" + (" (or no c4-validation.*.json.gz there)" if name == "c4" else ""))
    builder = _builder(Path(files[0]))
    ds = load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
    if builder == "text":
        field = "text"
    if field not in ds.column_names:
        raise CorpusError(f"sets.{name}.text_field={field!r}: not a field of {files[0]} ({', '.join(ds.column_names)})")
    return ds, field


def _hub(name: str, field: str, cache_dir: str | None) -> Any:
    from datasets import load_dataset

    from peerlab.data.c4 import hub_unreachable_reason

    if name not in HUB:
        raise CorpusError(f"eval set {name!r} has no hub source: set sets.{name}.path to a local file")
    why = hub_unreachable_reason()
    if why:
        raise CorpusError(f"eval set {name!r}: the Hugging Face hub is unreachable ({why}); set sets.{name}.path to a local copy")
    if name == "c4":
        ds = load_dataset("json", data_files=["hf://datasets/allenai/c4/en/c4-validation.00000-of-00008.json.gz"],
                          split="train", cache_dir=cache_dir)
    else:
        repo, config, split = HUB[name]
        ds = load_dataset(repo, config, split=split, cache_dir=cache_dir)
    return ds, field


def documents(name: str, spec: dict, cache_dir: str | None = None, max_documents: int | None = None) -> Iterator[str]:
    if name not in SETS:
        raise CorpusError(f"eval_sets: {name!r} is not an evaluation set; allowed: {', '.join(SETS)}")
    field = spec.get("text_field") or "text"
    ds, field = _local(name, spec["path"], field, cache_dir) if spec.get("path") else _hub(name, field, cache_dir)
    if name == "wikitext":  # one stream: the lines of the test set in order
        yield "".join(row[field] for row in ds)
        return
    for i, row in enumerate(ds):
        if max_documents is not None and i >= max_documents:
            return
        if row[field] and row[field].strip():
            yield row[field]
