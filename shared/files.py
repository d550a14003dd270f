"""Atomic file writes: both writers (the teacher's cache, the trainer's checkpoints) use this one rule."""

from __future__ import annotations

import json
import os
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
