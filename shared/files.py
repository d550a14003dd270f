"""Atomic file writes: both writers (the teacher's cache, the trainer's checkpoints) use this one rule; and
bounded reads of regular files, for readers of files that anyone with access to a folder may have put there."""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from pydantic import BaseModel

TEMP_MARK = ".tmp"  # temp files are `<name>.tmp<pid>`: a dead writer's leftovers can be told from a live one's


def temp_path(path: str) -> str:
    return f"{path}{TEMP_MARK}{os.getpid()}"


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write so a reader never sees a half-written file: temp file, fsync, rename; no temp left on error."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_bytes(obj: Any) -> bytes:
    """Indented JSON of a pydantic model or plain data."""
    return (obj.model_dump_json(indent=1) if isinstance(obj, BaseModel) else json.dumps(obj, indent=1)).encode()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


class FileTooLarge(OSError):
    """A file over the size a reader takes."""


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (FileTooLarge beyond). Opened without blocking, so a
    FIFO or a device is refused (OSError) instead of holding the reader forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if st.st_size > max_bytes:
            raise FileTooLarge(errno.EFBIG, f"{st.st_size} bytes, over {max_bytes}", os.fspath(path))
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since
        raise FileTooLarge(errno.EFBIG, f"over {max_bytes} bytes", os.fspath(path))
    return data
