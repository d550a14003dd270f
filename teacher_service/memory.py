"""The server process's malloc: keep its memory near what is live (benchmarks/rows_memory.py).

Row streams allocate shard-sized buffers (a shard's targets, serialised record batches) on many pool threads.
glibc gives threads their own arenas (up to 8 per core), and memory freed in one is not reused by another; and
once a large mapped block is freed, glibc raises its mmap threshold (up to 32 MiB), so later shard-sized buffers
come from the heap and stay resident after they are freed. A low fixed threshold maps them afresh and unmaps
them on free, but maps every large tensor of the teacher's forward afresh too (12-20% slower:
benchmarks/forward_malloc.py): so it is set only while row streams run, and raised back to glibc's ceiling when
the last one ends.
"""

from __future__ import annotations

import ctypes
import threading

M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc mallopt parameters
HEAP_MMAP_THRESHOLD = 32 << 20  # glibc's largest sliding threshold: tensors of the forward stay on the heap


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return None


class Malloc:
    """The process's glibc malloc settings, and the threshold switch around row streams."""

    def __init__(self) -> None:
        self.libc, self.lock, self.streams, self.stream_threshold = _libc(), threading.Lock(), 0, 0

    def tune(self, arenas: int, stream_threshold: int) -> None:
        """Few shared arenas (0: glibc's default); `stream_threshold` > 0: the mmap threshold while streams run.
        Without glibc nothing is tuned and the stream switch stays off."""
        if self.libc is None:
            return
        if arenas > 0:
            self.libc.mallopt(M_ARENA_MAX, arenas)
        self.stream_threshold = stream_threshold

    def stream_started(self) -> None:
        with self.lock:
            self.streams += 1
            if self.streams == 1 and self.stream_threshold:
                self.libc.mallopt(M_MMAP_THRESHOLD, self.stream_threshold)

    def stream_ended(self) -> None:
        with self.lock:
            self.streams -= 1
            if self.streams == 0 and self.stream_threshold:
                self.libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
                self.libc.malloc_trim(0)


MALLOC = Malloc()
