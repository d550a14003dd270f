"""CacheStream on a real tiny cache: coverage across ranks × workers, determinism, resume, batch contents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.trainer.stream import CacheStream, loader

GROUP = 3  # a clean row and its 2 variants
TRAIN_GROUPS = 40


@pytest.fixture(scope="module")
def cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("stream-cache")
    req = CacheRequest(model=str(tiny_model), task="sentiment-rt-drugs", limit=TRAIN_GROUPS, shard_rows=9,
                       layers=[1, 2])
    spec, task = resolve(req, str(tiny_model))
    m = precompute(spec, task, Encoder(str(tiny_model)), root)
    tr = m.splits["train"]
    assert (tr.start, tr.stop, tr.group_size) == (0, TRAIN_GROUPS * GROUP, GROUP)
    assert m.n_shards >= 10
    return str(root / m.key)


@pytest.fixture(scope="module")
def train(cache: str):  # noqa: ANN201
    return CacheReader(cache).read_split("train")


def ids(batches: list[dict]) -> list[list[int]]:
    return [b["example_id"].tolist() for b in batches]


def stream(cache: str, **kw) -> CacheStream:  # noqa: ANN003
    return CacheStream(cache, **{"batch_groups": 4, "num_workers": 2, **kw})


def check_groups(batch: dict, perturbation: list[str]) -> None:
    eid, parent, clean = batch["example_id"].tolist(), batch["parent_id"].tolist(), batch["clean"].tolist()
    assert len(eid) % GROUP == 0 and len(eid) > 0
    for j in range(0, len(eid), GROUP):
        g = eid[j]
        assert g % GROUP == 0, eid  # a group starts with its clean row
        assert eid[j:j + GROUP] == [g, g + 1, g + 2]
        assert parent[j:j + GROUP] == [g] * GROUP
    assert clean == [perturbation[e] == "clean" for e in eid]
    assert clean == [e % GROUP == 0 for e in eid]


# ---- coverage ------------------------------------------------------------------------------------------
def test_every_train_group_once_per_epoch_across_ranks_and_workers(cache: str, train) -> None:  # noqa: ANN001
    perturbation = train.rows.column("perturbation").to_pylist()
    per_rank = []
    for rank in range(2):
        s = stream(cache, rank=rank, world_size=2)
        batches = list(loader(s))
        assert len(batches) == len(s)
        for b in batches:
            check_groups(b, perturbation)
        per_rank.append([e for b in ids(batches) for e in b])
    assert per_rank[0] and per_rank[1]
    assert not set(per_rank[0]) & set(per_rank[1])
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)) == TRAIN_GROUPS * GROUP
    assert sorted(seen) == list(range(TRAIN_GROUPS * GROUP))


def test_evaluation_splits_are_never_streamed(cache: str) -> None:
    m = CacheReader(cache).manifest
    assert {"validation_heldout", "test_heldout"} <= set(m.splits)
    for split in m.splits:
        if split != "train":
            with pytest.raises(ValueError, match="evaluation only"):
                stream(cache, split=split)


# ---- determinism --------------------------------------------------------------------------------------
def test_order_deterministic_and_same_with_or_without_workers(cache: str) -> None:
    a = ids(list(stream(cache)))
    assert a == ids(list(stream(cache)))
    assert ids(list(loader(stream(cache)))) == a  # 2 DataLoader worker processes == main process playing both
    assert ids(list(stream(cache, seed=1))) != a
    other = stream(cache)
    other.set_epoch(1)
    b = ids(list(other))
    assert b != a
    assert sorted(e for x in b for e in x) == sorted(e for x in a for e in x)
    again = stream(cache)
    again.set_epoch(1)
    assert ids(list(loader(again))) == b
    # per rank too
    r1 = ids(list(stream(cache, rank=1, world_size=2)))
    assert ids(list(loader(stream(cache, rank=1, world_size=2)))) == r1


# ---- resume --------------------------------------------------------------------------------------------
def test_mid_epoch_resume_continues_exactly(cache: str) -> None:
    s = stream(cache)
    counts = s._batch_counts()
    full = ids(list(s))
    assert len(full) == sum(counts) == len(s)
    assert counts[0] != counts[1], counts  # so one worker runs out before the other
    # every k in-process; through the DataLoader, k=3 (workers uneven: 2 vs 1 batches taken) and
    # 2*min+1 (past the shorter worker's end, where the round-robin stops alternating)
    for k in range(len(full) + 1):
        first = s  # the interrupted run: take its first k batches
        taken = ids([b for _, b in zip(range(k), first, strict=False)])
        assert taken == full[:k]
        state = first.state_dict(k)
        fresh = stream(cache)
        fresh.load_state_dict(state)
        assert ids(list(fresh)) == full[k:], k
        if k in (3, 2 * min(counts) + 1):
            fresh = stream(cache)
            fresh.load_state_dict(state)
            assert ids(list(loader(fresh))) == full[k:], k
            # an interrupted run through the DataLoader saves a state that resumes the same way
            taken = []
            for b in loader(stream(cache)):
                taken.append(b["example_id"].tolist())
                if len(taken) == k:
                    break
            assert taken == full[:k]


def test_resume_keeps_epoch_and_checks_seed(cache: str) -> None:
    s = stream(cache, rank=0, world_size=2)
    s.set_epoch(3)
    full = ids(list(s))
    state = s.state_dict(3)
    fresh = stream(cache, rank=0, world_size=2)
    fresh.load_state_dict(state)
    assert fresh.epoch == 3
    assert ids(list(loader(fresh))) == full[3:]
    fresh.set_epoch(4)  # a new epoch starts from its beginning
    assert len(ids(list(fresh))) == len(fresh)
    with pytest.raises(ValueError, match="seed"):
        stream(cache, rank=0, world_size=2, seed=9).load_state_dict(state)


# ---- batch contents ------------------------------------------------------------------------------------
def test_batch_tensors_match_cache(cache: str, train) -> None:  # noqa: ANN001
    reader = CacheReader(cache)
    rows = reader.read_rows(0, TRAIN_GROUPS * GROUP)
    stored_ids = rows.rows.column("input_ids").to_pylist()
    labels = rows.rows.column("label").to_pylist()
    pad = 31999
    batches = list(loader(stream(cache, pad_id=pad)))
    assert {k for k in batches[0] if k.startswith("t_")} == {"t_logits", "t_layer_1", "t_layer_2"}
    for b in batches:
        eid = b["example_id"].numpy()
        np.testing.assert_array_equal(b["t_logits"].numpy(), rows.targets["logits"][eid])
        np.testing.assert_array_equal(b["t_layer_1"].numpy(), rows.targets["layer_1"][eid])
        np.testing.assert_array_equal(b["t_layer_2"].numpy(), rows.targets["layer_2"][eid])
        assert b["t_logits"].dtype == torch.float32 and b["t_layer_1"].shape == (len(eid), 32)
        assert b["labels"].tolist() == [labels[e] for e in eid]
        lengths = [len(stored_ids[e]) for e in eid]
        assert b["input_ids"].shape == (len(eid), max(lengths))
        assert b["attention_mask"].sum(1).tolist() == lengths
        for row, e in enumerate(eid):
            n = len(stored_ids[e])
            assert b["input_ids"][row, :n].tolist() == stored_ids[e]
            assert (b["input_ids"][row, n:] == pad).all()
            assert (b["attention_mask"][row, n:] == 0).all()
    # and the reader's split view agrees with the row range
    np.testing.assert_array_equal(train.targets["logits"], rows.targets["logits"])


def test_max_groups_limits_to_first_groups(cache: str) -> None:
    for n in (5, 1):
        s = stream(cache, max_groups=n)
        batches = list(s)
        assert len(batches) == len(s)
        seen = [e for b in ids(batches) for e in b]
        assert sorted(seen) == list(range(n * GROUP))
    s = stream(cache, max_groups=7, rank=1, world_size=2)
    both = [e for r in range(2) for b in ids(list(loader(stream(cache, max_groups=7, rank=r, world_size=2))))
            for e in b]
    assert sorted(both) == list(range(7 * GROUP))
    assert ids(list(s)) == ids(list(loader(stream(cache, max_groups=7, rank=1, world_size=2))))


# ---- bad input -----------------------------------------------------------------------------------------
def test_unknown_split_names_it(cache: str) -> None:
    with pytest.raises(ValueError, match="no_such_split"):
        CacheStream(cache, split="no_such_split")


def test_dataloader_worker_count_mismatch_names_num_workers(cache: str) -> None:
    s = stream(cache, num_workers=2)
    it = iter(torch.utils.data.DataLoader(s, batch_size=None, num_workers=1))
    with pytest.raises(ValueError, match="num_workers"):
        next(it)
    it._shutdown_workers()  # now, rather than whenever the garbage collector gets to it


def test_an_abandoned_stream_closes_without_waiting_for_its_prefetch(cache: str) -> None:
    """A trainer that stops mid-epoch leaves the stream's generator open; closing it (or the garbage collector doing
    so at any point, even inside threading's own locks) must not join the prefetch thread: that join deadlocked a
    test run. Here the prefetch of the second window blocks until released, and close() returns first."""
    import threading

    s = CacheStream(cache, batch_groups=2, num_workers=1, window=1)
    release, read, calls = threading.Event(), s.reader.read_shard, []

    def read_shard(k: int):  # noqa: ANN202
        calls.append(k)
        if len(calls) > 1:  # the prefetch
            release.wait()
        return read(k)

    s.reader.read_shard = read_shard
    it = iter(s)
    assert next(it)["input_ids"].shape[0] > 0  # the first window read, the second one's prefetch running
    closer = threading.Thread(target=it.close, daemon=True)
    closer.start()
    closer.join(timeout=30)
    waited = closer.is_alive()
    release.set()
    closer.join()
    assert not waited, "closing the stream waited for its blocked prefetch"
