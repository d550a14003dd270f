"""Checkpoints of a run: the student's weights, the optimizer state while the run can resume, and its position.

`checkpoint/state.json` is written last: a checkpoint without it is incomplete. Once a run has finished its
optimizer state is deleted (it is twice the student's size) unless the run keeps it to train on.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from robustkd.shared.files import write_bytes_atomic, write_json_atomic
from robustkd.trainer.student import Student, load_student, save_student

OPTIMIZER = "optimizer.pt"
STATE = "state.json"


class CheckpointError(ValueError):
    pass


def save(folder: Path, student: Student, adapter: str, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    save_student(student, folder, adapter)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "rng": torch.get_rng_state()}, buf)
    write_bytes_atomic(folder / OPTIMIZER, buf.getvalue())
    write_json_atomic(folder / STATE, state)


def load(folder: Path, student: Student, adapter: str, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """Restore weights, optimizer, schedule and RNG; returns the saved position."""
    if not (folder / STATE).exists():
        raise CheckpointError(f"resume: no checkpoint in {folder}")
    if not (folder / OPTIMIZER).exists():
        raise CheckpointError(f"resume: {folder} holds a finished run without its optimizer state "
                              "(train with --keep-optimizer to continue a finished run)")
    load_student(student, folder, adapter)
    blob = torch.load(folder / OPTIMIZER, weights_only=True)
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    torch.set_rng_state(blob["rng"])
    return json.loads((folder / STATE).read_text())


def drop_optimizer(folder: Path) -> None:
    (folder / OPTIMIZER).unlink(missing_ok=True)
