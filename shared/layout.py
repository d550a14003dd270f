"""On-disk layout of a teacher cache and its manifest: the files, their names and what each row means.

One folder per cache, named by its key, under a store root (`ROBUSTKD_CACHE_ROOT`, default `./cache`)::

    <root>/<key>/
      spec.json                  CacheSpec, written first so a partial folder can be identified
      rows/shard-00000.arrow     Arrow IPC file per shard: ROWS_SCHEMA
      targets.zarr/              Zarr v3 group; each array chunked by shard along rows
        logits                   [N, C] float32, teacher class logits
        layer_<i>                [N, D] float16, pooled hidden_states[i] (mean over real tokens, or CLS)
      head.safetensors           teacher head: weight [C, D], bias [C] (on the pooled last layer); metadata
                                 `info` (JSON) says how it was made (probe C, verbalizer token ids, calibration)
      shards/shard-00000.json    a shard's done-marker with its checksums, written after its data
      manifest.json              written LAST; a folder without it is not a cache

Row order: the splits in `SPLITS` order. `train`, `validation` and the optional `unlabelled` split hold groups:
a clean example followed by its perturbed variants (`group_size` = 1 + variants rows); `unlabelled` rows have no
label (-1) and only the distillation and activation terms see them. `test` and `ood_test` hold clean rows;
`validation_heldout` and `test_heldout` hold each clean validation / test row once more, perturbed by a
transform the training recipe never uses (`parent_id` points at the clean row). Only `train` and `unlabelled`
are ever trained on (`TRAINABLE_SPLITS`); the other splits exist for evaluation alone.
Shard k holds rows [k*shard_rows, (k+1)*shard_rows); shard_rows is a multiple of the group size, so no group
straddles shards. Zarr chunk k of every array holds exactly shard k.

Causal-LM teachers (spec.teacher.family = "causal-lm"): `input_ids` are the prompt template (spec.teacher.prompt)
around the row's `text`, the text truncated so the prompt's end (its answer cue) is always kept; `text` is the
(perturbed) input without the template. Verbalizer heads are the label words' rows of the LM's output layer
(`logits` = their next-token logits at the last token, plus the calibration bias).

Generative caches (spec.sparse set) have no `logits` array and an empty head; their rows files add
`GENERATIVE_FIELDS`: `prompt_len` (input_ids[:prompt_len] is the prompt, the rest the response ending in EOS),
`response`, and the teacher's next-token targets for each response token, as Arrow list columns (ragged per
row: Arrow's offsets; one inner entry per response token), indices in spec.sparse.index_dtype, values float16:

    top-k     sparse_ids    list<fixed_size_list<uint16>[k]>   the k most likely tokens
              sparse_logp   list<fixed_size_list<float16>[k]>  their log-probabilities
              sparse_rest   list<float16>                      log of the mass outside them
    sampled   sparse_ids    list<list<uint16>>                 the distinct tokens among k draws
              sparse_counts list<list<uint8>>                  how often each was drawn (sum k)
              sparse_logw   list<list<float16>>                log p/q of each (only when τ != 1)
    dense     sparse_logp   list<fixed_size_list<float16>[V]>  every log-probability

The rows file's checksum in the shard record covers them, and the service's row stream carries them as is.

A generative cache asked for unrelated prompts (spec.general set) holds them in two more splits of single clean
rows: `unlabelled` (their distillation half: distillation-only rows) and `general` (their evaluation half, for
forgetting metrics only). Their `input_ids` are spec.general.prompt around the prompt, then the teacher's own
greedy answer (EOS included when it stopped before spec.general.max_new_tokens); `response` is that answer's text.
"""

from __future__ import annotations

import os

import pyarrow as pa
from pydantic import BaseModel

from robustkd.shared.spec import CacheSpec

MANIFEST = "manifest.json"
SPEC = "spec.json"
HEAD = "head.safetensors"
TARGETS = "targets.zarr"
CLEAN = "clean"

# grouped splits first: their groups start at multiples of the group size, so no group straddles a shard
SPLITS = ("train", "validation", "unlabelled", "test", "ood_test", "general", "validation_heldout", "test_heldout")
OPTIONAL_SPLITS = ("unlabelled", "general")  # present only when asked for (unlabelled inputs, unrelated prompts)
GENERAL = "general"  # a generative cache's unrelated prompts kept for evaluation (forgetting metrics)
TRAINABLE_SPLITS = ("train", "unlabelled")
UNLABELLED = -1  # the label of the rows of the unlabelled split
HELDOUT_OF = {"validation_heldout": "validation", "test_heldout": "test"}  # held-out split -> its clean split

ROWS_SCHEMA = pa.schema([
    ("example_id", pa.int64()),      # row index in the cache
    ("source_id", pa.string()),      # the task's stable row id
    ("split", pa.string()),
    ("domain", pa.string()),
    ("perturbation", pa.string()),   # transform name or "clean"
    ("severity", pa.int8()),         # 0 for clean rows
    ("variant", pa.int16()),         # 0 for clean rows, 1..variants otherwise
    ("parent_id", pa.int64()),       # example_id of the clean row of the group
    ("text", pa.string()),           # the exact text the teacher saw
    ("input_ids", pa.list_(pa.int32())),
    ("label", pa.int64()),
])
GENERATIVE_FIELDS = (pa.field("prompt_len", pa.int32()), pa.field("response", pa.string()))
SPARSE_PREFIX = "sparse_"


class CacheError(ValueError):
    """A cache is missing, incomplete, corrupted or not what the caller asked for."""


def default_root() -> str:
    """The cache root: `ROBUSTKD_CACHE_ROOT` (a folder or an fsspec URL), default `cache`."""
    return os.environ.get("ROBUSTKD_CACHE_ROOT", "cache")


MINORITY_SHARE = 0.60  # a task is imbalanced when a class has under this fraction of an equal share of the rows


def imbalanced(counts: list[int]) -> bool:
    """True when some class has under MINORITY_SHARE of an equal share (1/C) of the rows, e.g. under 30% of them
    with two classes: class weights `auto` then balance."""
    return bool(counts) and sum(counts) > 0 and min(counts) * len(counts) < MINORITY_SHARE * sum(counts)


def is_key(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def resolve_location(cache: str, root: str | None = None) -> str:
    """A key (64 hex chars) becomes `<root>/<key>`; paths and URLs pass through."""
    return f"{(root or default_root()).rstrip('/')}/{cache}" if is_key(cache) else cache


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def rows_path(index: int) -> str:
    return f"rows/{shard_name(index)}.arrow"


def marker_path(index: int) -> str:
    return f"shards/{shard_name(index)}.json"


def chunk_path(array: str, index: int) -> str:
    """Relative path of shard `index`'s chunk of a 2-D array (zarr v3 default chunk key encoding)."""
    return f"{TARGETS}/{array}/c/{index}/0"


def layer_array(layer: int) -> str:
    return f"layer_{layer}"


class ShardRecord(BaseModel):
    index: int
    start: int
    stop: int
    rows_sha256: str
    chunks_sha256: dict[str, str]


class SplitRange(BaseModel):
    start: int
    stop: int
    group_size: int

    @property
    def groups(self) -> int:
        return (self.stop - self.start) // self.group_size

    def clean_rows(self) -> range:
        """Cache row indices of the split's clean rows: the first row of each group."""
        return range(self.start, self.stop, self.group_size)


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class Manifest(BaseModel):
    key: str
    complete: bool
    format_version: int
    spec: CacheSpec
    n_rows: int
    shard_rows: int
    n_shards: int
    hidden_size: int
    num_labels: int
    label_names: list[str]
    splits: dict[str, SplitRange]
    label_counts: dict[str, list[int]] = {}  # split -> rows per class (clean rows; unlabelled rows are not counted)
    notes: list[str] = []  # what loading changed in the data (e.g. rows dropped for a missing label)
    arrays: dict[str, ArrayInfo]
    shards: list[ShardRecord]
    head_sha256: str
    head_info: dict = {}
    vocab_size: int | None = None
    versions: dict[str, str]
    timings: dict[str, float]
    created_at: str

    @property
    def layers(self) -> list[int]:
        return list(self.spec.teacher.layers)

    @property
    def rows_timed(self) -> int:
        """The rows `timings` cover: those the run that finished the cache computed (all, in older manifests)."""
        return int(self.timings.get("rows", self.n_rows))

    def shards_for(self, start: int, stop: int) -> list[int]:
        """Indices of shards overlapping rows [start, stop)."""
        if stop <= start:
            return []
        return list(range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1))
