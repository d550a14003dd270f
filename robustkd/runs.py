"""Runs as child processes: each training run in its own process, so its peak memory is its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from robustkd.trainer.config import TrainConfig


class RunFailed(RuntimeError):
    pass


def train_in_subprocess(cfg: TrainConfig, *, echo: bool = False) -> dict:
    """Train and evaluate `cfg` in `python -m robustkd.trainer`; returns its metrics.json ({} without evaluation).

    The config goes to the child as the run's config.json, through `TrainConfig` itself. Output goes to
    `<out>/stdout.log`, and to this process's stderr as well with `echo`.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.json"
    config.write_text(cfg.model_dump_json(indent=1))
    log = out / "stdout.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "robustkd.trainer", str(config)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            fh.write(line)
            fh.flush()
            if echo:
                sys.stderr.write(line)
        proc.wait()
    if proc.returncode != 0:
        raise RunFailed(f"training {out} failed (exit {proc.returncode}):\n{log.read_text()[-2000:]}")
    return json.loads((out / "metrics.json").read_text()) if cfg.evaluate else {}
