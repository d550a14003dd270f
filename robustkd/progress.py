"""Progress of long CLI steps: a live bar on a terminal, a plain line every few seconds otherwise (logs, pipes)."""

from __future__ import annotations

import time

from rich.console import Console

LINE_EVERY_S = 5.0


class Progress:
    """Callable as `progress(stage, done, total)`; use as a context manager."""

    def __init__(self, console: Console, description: str, unit: str = "rows", every: float = LINE_EVERY_S) -> None:
        self.console, self.description, self.unit, self.every = console, description, unit, every
        self.bar = None
        self.t0, self.last = 0.0, float("-inf")

    def __enter__(self) -> Progress:
        self.t0 = time.perf_counter()
        if self.console.is_terminal:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(),
                           TextColumn("{task.completed}/{task.total} " + self.unit),
                           TextColumn("{task.fields[rate]}/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.description, total=None, rate="-")
        return self

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        """`total` None: the amount is not known in advance (a file read as a stream)."""
        elapsed = time.perf_counter() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(self.task, description=stage, completed=done, total=total, rate=f"{rate:.0f}")
            return
        now = time.perf_counter()
        if now - self.last >= self.every or (total is not None and done >= total):
            self.last = now
            known = total is not None and 0 < rate and done < total
            eta = f", about {(total - done) / rate:.0f}s left" if known else ""
            of = "" if total is None else f"/{total}"
            self.console.print(f"{self.description}: {stage} {done}{of} {self.unit} "
                               f"({rate:.0f}/s, {elapsed:.0f}s{eta})", soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
