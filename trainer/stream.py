"""Stream a teacher cache as training batches: shard by shard, deterministic, resumable, rank/worker split.

Order (a pure function of seed, epoch, world size and `num_workers`, never of timing):
1. the split's shards are permuted by (seed, epoch) and dealt to ranks, then to logical workers;
2. each logical worker shuffles the groups of a window of `window` shards at a time and cuts batches;
3. batches interleave round-robin over logical workers, as a DataLoader with that many workers yields them.
A logical worker is a DataLoader worker when there are any, else the main process plays all of them in
turn, so the order is the same with or without worker processes. A group (a clean row and its perturbed
variants) is never split; every group of the split is yielded exactly once per epoch across all ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from robustkd.shared.features import pad_batch
from robustkd.shared.layout import SPARSE_PREFIX, TRAINABLE_SPLITS, Manifest
from robustkd.shared.reader import CacheReader
from robustkd.shared.seeding import numpy_rng as _rng


def split_shards(m: Manifest, split: str) -> list[int]:
    r = m.splits[split]
    return m.shards_for(r.start, r.stop)


def shard_groups(m: Manifest, split: str, shard: int) -> list[int]:
    """Start rows of the split's groups that lie in `shard`."""
    r = m.splits[split]
    lo, hi = max(r.start, shard * m.shard_rows), min(r.stop, (shard + 1) * m.shard_rows)
    return [row for row in r.clean_rows() if lo <= row < hi]


class CacheStream(IterableDataset):
    """Batches of `batch_groups` groups with their teacher targets, from one split of a cache."""

    def __init__(self, cache: str | CacheReader, split: str = "train", *, batch_groups: int = 16, seed: int = 0,
                 shuffle: bool = True, window: int = 2, rank: int | None = None, world_size: int | None = None,
                 num_workers: int = 1, pad_id: int = 0, max_groups: int | None = None) -> None:
        self.reader = cache if isinstance(cache, CacheReader) else CacheReader(cache)
        self.location = self.reader.location
        m = self.reader.manifest
        if split not in TRAINABLE_SPLITS:
            raise ValueError(f"split: {split!r} is for evaluation only; a stream trains on {TRAINABLE_SPLITS}")
        if split not in m.splits:
            raise ValueError(f"split: cache has no {split!r} (has {sorted(m.splits)})")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        self.rank, self.world = rank or 0, world_size or 1
        self.split, self.batch_groups, self.seed, self.shuffle = split, batch_groups, seed, shuffle
        self.window, self.num_workers, self.pad_id = window, max(1, num_workers), pad_id
        self.max_groups = max_groups
        self.epoch = 0
        self.skip = 0  # batches of this epoch already consumed (resume)

    # ---- the deterministic plan -------------------------------------------------------------------
    def _worker_shards(self, worker: int) -> list[int]:
        shards = split_shards(self.reader.manifest, self.split)
        if self.shuffle:
            shards = [shards[i] for i in _rng(self.seed, self.epoch).permutation(len(shards))]
        mine = shards[self.rank::self.world]
        return mine[worker::self.num_workers]

    def _windows(self, worker: int) -> list[tuple[list[int], list[int]]]:
        """(shards, ordered group starts) per window of this worker."""
        m = self.reader.manifest
        shards = self._worker_shards(worker)
        out = []
        for j in range(0, len(shards), self.window):
            win = shards[j:j + self.window]
            groups = [g for s in win for g in shard_groups(m, self.split, s)]
            if self.max_groups is not None:
                groups = [g for g in groups if self._group_index(g) < self.max_groups]
            if self.shuffle:
                groups = [groups[i] for i in _rng(self.seed, self.epoch, self.rank, worker, j).permutation(len(groups))]
            out.append((win, groups))
        return out

    def _group_index(self, start: int) -> int:
        r = self.reader.manifest.splits[self.split]
        return (start - r.start) // r.group_size

    def _batch_counts(self) -> list[int]:
        counts = []
        for w in range(self.num_workers):  # batches are cut per window, as `_worker_batches` does
            counts.append(sum(-(-len(g) // self.batch_groups) for _, g in self._windows(w)))
        return counts

    def __len__(self) -> int:
        return sum(self._batch_counts())

    def _resume_point(self) -> tuple[list[int], int]:
        """Per worker, how many batches the first `skip` round-robin batches took; and who is next."""
        counts, taken = self._batch_counts(), [0] * self.num_workers
        left, i = self.skip, 0
        while left > 0 and any(taken[w] < counts[w] for w in range(self.num_workers)):
            w = i % self.num_workers
            if taken[w] < counts[w]:
                taken[w] += 1
                left -= 1
            i += 1
        return taken, i % self.num_workers

    # ---- iteration ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skip = epoch, 0

    def state_dict(self, batches_consumed: int) -> dict:
        """Where to resume: the epoch and how many of its batches the caller consumed."""
        return {"epoch": self.epoch, "batches": batches_consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError("stream state was saved with another seed")
        self.epoch, self.skip = state["epoch"], state["batches"]

    def _worker_batches(self, worker: int, skip: int) -> Iterator[dict]:
        m = self.reader.manifest
        windows = self._windows(worker)
        done = 0
        pool = ThreadPoolExecutor(1)  # prefetch the next window while this one is consumed
        try:
            def load(win: list[int]):  # noqa: ANN202
                return [self.reader.read_shard(s) for s in win]

            futures = {}
            for j, (win, groups) in enumerate(windows):
                n_batches = -(-len(groups) // self.batch_groups)
                if done + n_batches <= skip:  # whole window already consumed: skip without reading
                    done += n_batches
                    continue
                fut = futures.pop(j, None) or pool.submit(load, win)
                if j + 1 < len(windows):
                    futures[j + 1] = pool.submit(load, windows[j + 1][0])
                shards = {s.index: s for s in fut.result()}
                for b in range(n_batches):
                    if done >= skip:
                        yield self._collate(shards, groups[b * self.batch_groups:(b + 1) * self.batch_groups], m)
                    done += 1
        finally:
            # never join here: an abandoned generator is closed by the garbage collector, which may run inside
            # threading's own locks, where joining the prefetch thread deadlocks; an unstarted read is cancelled
            pool.shutdown(wait=False, cancel_futures=True)

    def _collate(self, shards: dict, groups: list[int], m: Manifest) -> dict:
        g = m.splits[self.split].group_size
        rows, targets, sparse = [], {k: [] for k in m.arrays}, []
        cols = ("example_id", "input_ids", "label", "perturbation", "parent_id")
        if m.spec.generative:  # the prompt's length, and each response token's sparse targets (Arrow columns)
            cols += ("prompt_len",)
        for start in groups:
            s = shards[start // m.shard_rows]
            base = s.index * m.shard_rows
            sl = s.rows.slice(start - base, g)
            rows.append({c: sl.column(c).to_pylist() for c in cols})
            if m.spec.generative:
                sparse.append(sl.select([c for c in sl.column_names if c.startswith(SPARSE_PREFIX)]))
            for k in targets:
                targets[k].append(s.targets[k][start - base:start - base + g])
        flat = {c: [v for r in rows for v in r[c]] for c in cols}
        ids, mask = pad_batch(flat["input_ids"], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor(flat["label"], dtype=torch.long),
                 "clean": torch.tensor([p == "clean" for p in flat["perturbation"]]),
                 "example_id": torch.tensor(flat["example_id"], dtype=torch.long),
                 "parent_id": torch.tensor(flat["parent_id"], dtype=torch.long)}
        for k, v in targets.items():
            batch[f"t_{k}"] = torch.from_numpy(np.concatenate(v))
        if m.spec.generative:
            batch["prompt_len"] = torch.tensor(flat["prompt_len"], dtype=torch.long)
            batch["sparse"] = pa.concat_tables(sparse)
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        taken, start = self._resume_point()
        # real worker i plays logical worker start+i, so a DataLoader (which always starts its round-robin
        # at worker 0) continues a resumed epoch in the same order as an uninterrupted one
        order = [(start + i) % self.num_workers for i in range(self.num_workers)]
        if info is not None:
            if info.num_workers != self.num_workers:
                raise ValueError(f"num_workers: stream planned for {self.num_workers} workers, "
                                 f"DataLoader has {info.num_workers}")
            w = order[info.id]
            yield from self._worker_batches(w, taken[w])
            return
        its = {w: self._worker_batches(w, taken[w]) for w in order}
        active = order
        while active:
            nxt = []
            for w in active:
                try:
                    yield next(its[w])
                    nxt.append(w)
                except StopIteration:
                    pass
            active = nxt


def loader(stream: CacheStream) -> torch.utils.data.DataLoader:
    """A DataLoader whose worker count matches the stream's plan (0 workers when it plans 1)."""
    workers = stream.num_workers if stream.num_workers > 1 else 0
    # its own generator: a DataLoader draws its base seed from the global RNG per iterator, which would shift the
    # student's dropout masks after a resume (the stream's order is seeded by the stream itself)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                                       prefetch_factor=2 if workers else None, generator=torch.Generator())


def concat_batches(a: dict, b: dict, pad_id: int) -> dict:
    """Two collated batches as one: rows of `a` then `b`, token ids re-padded to the longer width."""
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    out = {k: pa.concat_tables([a[k], b[k]]) if isinstance(a[k], pa.Table) else torch.cat([a[k], b[k]])
           for k in a if k not in ("input_ids", "attention_mask")}  # a generative batch's sparse targets: a table
    out["input_ids"] = torch.cat([pad(a["input_ids"], pad_id), pad(b["input_ids"], pad_id)])
    out["attention_mask"] = torch.cat([pad(a["attention_mask"], 0), pad(b["attention_mask"], 0)])
    return out


class Cycle:
    """Batches of `stream`, epoch after epoch (a new shuffle each), for as long as the caller takes them. Its
    position (the epoch and the batches taken of it) is a state to checkpoint: a resumed run goes on from there."""

    def __init__(self, stream: CacheStream) -> None:
        self.stream, self.epoch, self.taken = stream, 0, 0
        self._it: Iterator[dict] | None = None

    def __iter__(self) -> Cycle:
        return self

    def __next__(self) -> dict:
        for _ in range(2):  # the rest of this epoch, else the next one from its start
            if self._it is None:
                self.stream.load_state_dict(self.state_dict())
                self._it = iter(self.stream)
            batch = next(self._it, None)
            if batch is not None:
                self.taken += 1
                return batch
            self.epoch, self.taken, self._it = self.epoch + 1, 0, None
        raise ValueError(f"split {self.stream.split!r} yields no batches")

    def state_dict(self) -> dict:
        return self.stream.state_dict(self.taken) | {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self.epoch, self.taken, self._it = state["epoch"], state["batches"], None
