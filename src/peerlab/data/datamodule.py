"""The LightningDataModule: corpus -> tokenizer -> cached token shards -> packed ``seq_len`` blocks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from peerlab.data import token_cache
from peerlab.data.sampling import ResumableSampler
from peerlab.data.sharding import Padded, ShardedBatches
from peerlab.data.tokenizer import build_tokenizer, tokenizer_hash

log = logging.getLogger(__name__)


def blocks_in(tokens: int, seq_len: int) -> int:
    """Whole ``seq_len + 1``-token blocks (inputs and shifted targets) that fit in a shard of ``tokens``."""
    return max(0, (tokens - 1) // seq_len)


class PackedBlocks(Dataset):
    """Non-overlapping blocks of flat token streams (one per shard; blocks never cross shards): item ``i`` is
    ``(x, y)`` with ``y`` = ``x`` shifted by one token."""

    def __init__(self, shards: np.ndarray | Sequence[np.ndarray], seq_len: int) -> None:
        self.shards = [shards] if isinstance(shards, np.ndarray) else list(shards)
        self.seq_len = seq_len
        counts = [blocks_in(len(s), seq_len) for s in self.shards]
        self.offsets = np.cumsum([0, *counts])
        if self.offsets[-1] < 1:
            raise ValueError(f"data: {sum(len(s) for s in self.shards)} tokens cannot fill one block of seq_len={seq_len}")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        start = (i - int(self.offsets[shard])) * self.seq_len
        chunk = torch.from_numpy(self.shards[shard][start : start + self.seq_len + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class ResumableLoader(DataLoader):
    """The training loader, with Lightning's stateful-loader protocol (``state_dict``/``load_state_dict``), which
    Lightning looks for before it trusts a loader to resume mid-epoch. Where a resumed run continues is a pure
    function of the restored step (``sampling.py``), so the state holds what that function needs besides the step,
    the seed and the ranks, and a checkpoint whose stream differs from this run's is refused."""

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed, "world": self.sampler.world, "rank": self.sampler.rank}

    def load_state_dict(self, state: dict) -> None:
        saved, here = (state.get("seed"), state.get("world")), (self.sampler.seed, self.sampler.world)
        if saved != here:
            raise RuntimeError(f"the checkpoint's sample stream (seed, ranks) {saved} is not this run's {here}")


def kept_blocks(n: int, fraction: float) -> int:
    return max(1, int(n * fraction))


class EvenSubset(Dataset):
    """``fraction`` of a dataset's items, evenly spaced through it: a corpus stored source after source keeps every
    source's share (a prefix would drop the last sources). Used for data-constrained runs (``data.train_fraction``)."""

    def __init__(self, base: Dataset, fraction: float) -> None:
        n = len(base)
        m = kept_blocks(n, fraction)
        self.base, self.index = base, (np.arange(m, dtype=np.int64) * n) // m

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[int(self.index[i])]


class TextDataModule(L.LightningDataModule):
    """Serves a corpus (``EmbeddedCorpus``, ``C4Corpus``: anything with ``name``, ``key()``, ``texts(split)``
    and ``encode(tokenizer, split)``) as packed blocks, tokenized once into a shared cache."""

    def __init__(
        self,
        corpus: Any,
        seq_len: int,
        batch_size: int,
        tokenizer: dict,
        cache_dir: str = "~/.cache/peerlab",
        num_workers: int = 0,
        seed: int = 0,
        progress: bool = False,
        train_fraction: float = 1.0,
        local_rank: int = 0,
        val_batches: int | None = None,
    ) -> None:
        super().__init__()
        self.val_batches = val_batches  # batches of a periodic validation (the final one scores the whole split)
        self.local_rank = local_rank  # this process's rank on its node, as Lightning will resolve it
        if not 0 < train_fraction <= 1:
            raise ValueError(f"data.train_fraction={train_fraction}: must be in (0, 1]")
        self.train_fraction = train_fraction
        self.corpus = corpus
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.tokenizer_cfg = dict(tokenizer)
        self.cache_dir = Path(cache_dir).expanduser()
        self.num_workers = num_workers
        self.seed = seed
        self.progress = progress
        self.tokenizer = None
        self.manifest: dict | None = None
        self._entry: Path | None = None

    def prepare_data(self) -> None:
        """Build (or verify) the tokenizer and the token cache; cheap when both exist and are intact.
        Non-zero local ranks of a multi-process job wait for local rank 0 to build them."""
        if self.local_rank > 0:
            self._wait_for_rank_zero()
        tok = build_tokenizer(self.tokenizer_cfg.get("kind", "bpe"), lambda: self.corpus.texts("train"),
                              int(self.tokenizer_cfg.get("vocab_size") or 0), self.cache_dir, self.corpus.key())
        entry = token_cache.entry_dir(self.cache_dir, self.corpus.key(), tok)
        manifest = token_cache.verify(entry, tok)
        if manifest is None:
            if entry.exists():
                log.warning("token cache %s is incomplete or corrupt: rebuilding it", entry)
            manifest = token_cache.build(
                entry, tok, {split: self.corpus.encode(tok, split) for split in ("train", "val")},
                meta={"corpus": self.corpus.key()}, progress=self.progress,
            )
            for split, info in manifest["splits"].items():
                log.info("tokenized %s: %d documents, %d tokens in %.1f s (%.0f tokens/s)", split, info["documents"],
                         info["tokens"], info["seconds"], info["tokens"] / max(info["seconds"], 1e-9))
        self.tokenizer, self.manifest, self._entry = tok, manifest, entry
        self._mark_ready()

    @property
    def _ready_marker(self) -> Path:
        t = self.tokenizer_cfg
        return self.cache_dir / "tokens" / f".ready-{self.corpus.key()}-{t.get('kind')}-{t.get('vocab_size')}"

    def _wait_for_rank_zero(self, timeout_s: float = 6 * 3600) -> None:
        marker = self._ready_marker
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"local rank {self.local_rank}: local rank 0 did not build the data cache {marker}")
            time.sleep(1.0)

    def _mark_ready(self) -> None:
        self._ready_marker.parent.mkdir(parents=True, exist_ok=True)
        self._ready_marker.touch()

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is None:
            self.prepare_data()
        assert self._entry is not None and self.manifest is not None
        train = PackedBlocks(token_cache.load_split(self._entry, self.manifest, "train"), self.seq_len)
        self.train_set = train if self.train_fraction == 1 else EvenSubset(train, self.train_fraction)
        self.val_set = PackedBlocks(token_cache.load_split(self._entry, self.manifest, "val"), self.seq_len)

    def fingerprint(self) -> dict:
        """What the run trains and validates on, as a run's identity holds it: the corpus (its key changes with its
        documents or shard files), the tokenizer, and the hash of the cached tokens of both splits, all read from the
        cache's manifest (cheap at C4's scale)."""
        assert self.manifest is not None and self.tokenizer is not None, "call prepare_data() first"
        return {"corpus": self.corpus.key(), "tokenizer": tokenizer_hash(self.tokenizer), "vocab_size": self.vocab_size,
                "tokens": token_cache.content_hash(self.manifest),
                "train_tokens": int(self.manifest["splits"]["train"]["tokens"]),
                "val_tokens": int(self.manifest["splits"]["val"]["tokens"])}

    @property
    def vocab_size(self) -> int:
        assert self.tokenizer is not None, "call prepare_data() first"
        return self.tokenizer.get_vocab_size()

    def split_tokens(self, split: str) -> int:
        """Tokens in a split; for training with ``train_fraction`` < 1, the kept blocks' ``seq_len`` tokens each."""
        assert self.manifest is not None
        info = self.manifest["splits"][split]
        if split == "train" and self.train_fraction < 1:
            blocks = sum(blocks_in(int(s["tokens"]), self.seq_len) for s in info["shards"])
            return kept_blocks(blocks, self.train_fraction) * self.seq_len
        return int(info["tokens"])

    def train_dataloader(self) -> DataLoader:
        """Blocks in a seeded order that continues from the trainer's restored step (see ``sampling.py``)."""
        trainer = self.trainer
        steps_done = trainer.global_step if trainer is not None else 0
        max_steps = trainer.max_steps if trainer is not None and trainer.max_steps > 0 else steps_done + 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        per_step = accumulate * self.batch_size
        sampler = ResumableSampler(
            len(self.train_set), self.seed, start=steps_done * per_step, end=max(steps_done, max_steps) * per_step,
            rank=trainer.global_rank if trainer is not None else 0,
            world=trainer.world_size if trainer is not None else 1,
        )
        if sampler.start > 0:  # a resumed run says where in the sample stream it continues
            log.info("training data: positions %d to %d of the seeded sample stream", sampler.start, sampler.end)
        return ResumableLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """The first ``val_batches`` validation batches, shared out among data-parallel ranks (``sharding.py``)."""
        return self._sharded_val(self.val_batches)

    def eval_dataloader(self) -> DataLoader:
        """The whole validation split, shared out among data-parallel ranks: the final evaluation's."""
        return self._sharded_val(None)

    def _sharded_val(self, limit: int | None) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ShardedBatches(len(self.val_set), self.batch_size, rank, world, limit)
        return DataLoader(Padded(self.val_set), batch_sampler=sampler, num_workers=self.num_workers)
