"""`python -m robustkd.trainer RUN/config.json`: train and evaluate one run from its saved `TrainConfig`.

This is what `robustkd bench` and `robustkd demo` start, one process per run, so each run's peak memory is
its own. Progress goes to stdout as a line every few seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from robustkd.trainer.config import TrainConfig
from robustkd.trainer.train import train_and_evaluate

PROGRESS_EVERY_S = 10.0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m robustkd.trainer RUN/config.json", file=sys.stderr)
        return 2
    cfg = TrainConfig.model_validate_json(Path(argv[0]).read_text())
    last = [0.0]

    def on_step(step: int, total: int, rec: dict) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S or step == total:
            last[0] = time.monotonic()
            print(f"train {cfg.label}: step {step}/{total} loss {rec['loss']:.4f}", flush=True)

    _, summary, _ = train_and_evaluate(cfg, on_step)
    print(f"trained {summary['steps']} steps in {summary['train_s']:.1f}s, peak RSS {summary['peak_rss_mb']:.0f} MB",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
