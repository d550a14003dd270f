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
    device = next(student.parameters()).device
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng_state(device)}, buf)
    write_bytes_atomic(folder / OPTIMIZER, buf.getvalue())
    write_json_atomic(folder / STATE, state)


def load(folder: Path, student: Student, adapter: str, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """Restore weights, optimizer, schedule and RNG states; returns the saved position."""
    if not (folder / STATE).exists():
        raise CheckpointError(f"resume: no checkpoint in {folder}")
    if not (folder / OPTIMIZER).exists():
        raise CheckpointError(f"resume: {folder} holds a finished run without its optimizer state "
                              "(train with --keep-optimizer to continue a finished run)")
    load_student(student, folder, adapter)
    blob = torch.load(folder / OPTIMIZER, weights_only=True)
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    set_rng_state(blob["rng"] if isinstance(blob["rng"], dict) else {"cpu": blob["rng"]},
                  next(student.parameters()).device)
    return json.loads((folder / STATE).read_text())


def rng_state(device: torch.device) -> dict:
    """The generators dropout draws from: the CPU's, and the GPU's when the student is on one."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def drop_optimizer(folder: Path) -> None:
    (folder / OPTIMIZER).unlink(missing_ok=True)
