"""Sparse per-token teacher targets of generative caches: their Arrow columns, written and read alike by both sides.

A row's response of T tokens has T target entries (see `layout`'s docstring for the columns of each kind).
`TokenTargets` is one row's targets in numpy; `to_columns` turns a shard's rows into Arrow list columns, and
`read_batch` turns the columns of a batch of rows back into flat arrays, tokens in row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from robustkd.shared.layout import SPARSE_PREFIX

INDEX_DTYPES = ("uint8", "uint16", "uint32")
VALUE_DTYPE = np.float16


class SparseError(ValueError):
    """Sparse targets that cannot be stored or read; the message names the field."""


def index_dtype(vocab_size: int) -> str:
    """The smallest unsigned integer type that holds every token id of the vocabulary."""
    for name in INDEX_DTYPES:
        if vocab_size - 1 <= np.iinfo(name).max:
            return name
    raise SparseError(f"vocab_size: {vocab_size} tokens do not fit the largest index type (uint32)")


def check_vocab(vocab_size: int, dtype: str) -> None:
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise SparseError(f"index_dtype: {dtype} holds ids up to {np.iinfo(dtype).max}, but the vocabulary has "
                          f"{vocab_size} tokens")


@dataclass
class TokenTargets:
    """One row's targets: `ids`/`values` are [T, k] (top-k, dense: ids None) or per-token lists (sampled)."""

    ids: np.ndarray | list[np.ndarray] | None
    values: np.ndarray | list[np.ndarray]         # top-k/dense: log p; sampled: counts
    rest: np.ndarray | None = None                # top-k: log of the mass outside the k tokens, [T]
    logw: list[np.ndarray] | None = None          # sampled at τ != 1: log p/q of each drawn token

    @property
    def n_tokens(self) -> int:
        return len(self.values)


def _col(name: str) -> str:
    return SPARSE_PREFIX + name


def _fixed(rows: list[np.ndarray], width: int, dtype: str) -> pa.Array:
    """[T_r, width] per row -> list<fixed_size_list<dtype>[width]>."""
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    flat = np.concatenate([np.asarray(r, dtype).reshape(-1) for r in rows]) if rows else np.zeros(0, dtype)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _ragged(rows: list[list[np.ndarray]], dtype: str) -> pa.Array:
    """Per row, per token a variable-length array -> list<list<dtype>>."""
    outer = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    tokens = [t for r in rows for t in r]
    inner_off = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int32)
    flat = np.concatenate([np.asarray(t, dtype) for t in tokens]) if tokens else np.zeros(0, dtype)
    inner = pa.ListArray.from_arrays(pa.array(inner_off), pa.array(flat))
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def _flat(rows: list[np.ndarray], dtype: str) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    flat = np.concatenate([np.asarray(r, dtype) for r in rows]) if rows else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def to_columns(kind: str, rows: list[TokenTargets], k: int, vocab_size: int, index: str) -> dict[str, pa.Array]:
    """A shard's targets as Arrow columns (name -> array, one entry per row)."""
    check_vocab(vocab_size, index)
    f16 = "float16"
    if kind == "top-k":
        return {_col("ids"): _fixed([r.ids for r in rows], k, index),
                _col("logp"): _fixed([r.values for r in rows], k, f16),
                _col("rest"): _flat([r.rest for r in rows], f16)}
    if kind == "sampled":
        cols = {_col("ids"): _ragged([r.ids for r in rows], index),
                _col("counts"): _ragged([r.values for r in rows], "uint8")}
        if rows and rows[0].logw is not None:
            cols[_col("logw")] = _ragged([r.logw for r in rows], f16)
        return cols
    if kind == "dense":
        return {_col("logp"): _fixed([r.values for r in rows], vocab_size, f16)}
    raise SparseError(f"sparse: unknown kind {kind!r}")


@dataclass
class BatchTargets:
    """A batch's targets, tokens of all rows in row order (N tokens in all).

    top-k: ids, logp [N, k], rest [N]. sampled: `token` [S] (which of the N tokens each sample belongs to), ids
    [S], weight [S] (count/k · p/q: an unbiased estimate of the teacher's probability). dense: logp [N, V].
    """

    kind: str
    n_tokens: int
    ids: np.ndarray | None = None
    logp: np.ndarray | None = None
    rest: np.ndarray | None = None
    token: np.ndarray | None = None
    weight: np.ndarray | None = None


def _values(col: pa.ChunkedArray | pa.Array, depth: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Flattened leaf values and the offsets of each variable-length list level (outermost first, from 0)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = []
    for _ in range(depth):
        if isinstance(arr, pa.ListArray):
            off = arr.offsets.to_numpy()
            offsets.append(off - off[0])  # a sliced table's lists start mid-buffer
        arr = arr.flatten()  # flatten() honours slicing, for fixed-size lists too
    return arr.to_numpy(zero_copy_only=False), offsets


def read_batch(kind: str, table: pa.Table, k: int) -> BatchTargets:
    """The targets of a batch of rows (a table holding the sparse columns) as flat arrays."""
    if kind == "top-k":
        ids, _ = _values(table.column(_col("ids")), 2)
        logp, _ = _values(table.column(_col("logp")), 2)
        rest, _ = _values(table.column(_col("rest")), 1)
        return BatchTargets(kind, len(rest), ids=ids.reshape(-1, k).astype(np.int64),
                            logp=logp.reshape(-1, k).astype(np.float32), rest=rest.astype(np.float32))
    if kind == "dense":
        logp, _ = _values(table.column(_col("logp")), 2)
        col = table.column(_col("logp"))
        width = col.type.value_type.list_size
        return BatchTargets(kind, len(logp) // width, logp=logp.reshape(-1, width).astype(np.float32))
    if kind == "sampled":
        ids, (_, inner) = _values(table.column(_col("ids")), 2)
        counts, _ = _values(table.column(_col("counts")), 2)
        n = len(inner) - 1
        token = np.repeat(np.arange(n), np.diff(inner))
        weight = counts.astype(np.float32) / k
        if _col("logw") in table.column_names:
            logw, _ = _values(table.column(_col("logw")), 2)
            weight = weight * np.exp(logw.astype(np.float32))
        return BatchTargets(kind, n, ids=ids.astype(np.int64), token=token, weight=weight)
    raise SparseError(f"sparse: unknown kind {kind!r}")
