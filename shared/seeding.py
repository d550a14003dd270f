"""One rule for derived randomness: a seed is the sha256 of its parts, so any process reproduces it."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def hash_seed(*parts: object) -> int:
    """A 256-bit integer from the parts' text (order matters); stable across processes and platforms."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest(), "big")


def python_rng(*parts: object) -> random.Random:
    return random.Random(hash_seed(*parts))


def numpy_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(hash_seed(*parts) & ((1 << 64) - 1))
