"""Progress of long work: a tqdm bar on a terminal, plain lines in logs (SLURM, files).

    bar = Progress(total=len(loader), desc="epoch 3/200 step", every=50)
    for i, batch in enumerate(loader):
        ...
        bar.update(i + 1, lambda: f"loss {loss:.4f}")
    bar.close()

    for item in track(items, desc="convert", every=1000):   # the same, for a plain loop
        ...

On a terminal (stderr is a tty) the bar redraws in place and the status is refreshed a few
times a second; elsewhere a line `desc done/total status` is written every `every` steps or
every `every_s` seconds (never, when both are 0), so a SLURM log stays short and readable.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator

STATUS_EVERY_S = 0.5  # how often a bar asks for its status text (the text may need a GPU sync)


def interactive() -> bool:
    """True when progress goes to a terminal (stderr is a tty)."""
    return sys.stderr.isatty()


class Progress:
    """Steps of one loop: a bar on a terminal, a plain line every `every` steps (or `every_s`
    seconds, and once more at close) elsewhere."""

    def __init__(self, total: int, desc: str = "", every: int = 0, log: Callable[[str], None] = print,
                 initial: int = 0, enabled: bool = True, every_s: float = 0.0, unit: str = "step"):
        self.total, self.desc, self.every, self.every_s, self.log = total, desc, every, every_s, log
        self.enabled, self.bar, self.shown = enabled, None, 0.0
        self.done, self.initial, self.start = initial, initial, time.monotonic()
        self.last_line = self.start
        if enabled and interactive():
            from tqdm import tqdm
            size = shutil.get_terminal_size()  # 80x24 where a terminal reports no size (tqdm hides then)
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, ncols=size.columns,
                            nrows=size.lines, unit=unit, file=sys.stderr)

    def rate(self) -> float:
        """Steps per second since the start (not counting the `initial` ones)."""
        return (self.done - self.initial) / max(time.monotonic() - self.start, 1e-9)

    def update(self, done: int, status: Callable[[], str] | None = None) -> None:
        """`done` steps of `total` are finished; `status()` is called only when it is shown."""
        if not self.enabled:
            return
        self.done = done
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if status and time.monotonic() - self.shown > STATUS_EVERY_S:
                self.bar.set_postfix_str(status(), refresh=False)
                self.shown = time.monotonic()
        elif (self.every and done % self.every == 0) or (
                self.every_s and time.monotonic() - self.last_line >= self.every_s):
            self._line(status)

    def _line(self, status: Callable[[], str] | None) -> None:
        self.last_line = time.monotonic()
        self.log(f"{self.desc} {self.done}/{self.total}" + (f" {status()}" if status else ""))

    def close(self, status: Callable[[], str] | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.every_s:
            self._line(status)


def track(items: Iterable, total: int | None = None, desc: str = "", every: int = 0,
          log: Callable[[str], None] = print) -> Iterator:
    """Yield from `items` while showing progress (bar on a terminal, a line every `every` items)."""
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    bar = Progress(total, desc, every, log)
    try:
        for i, item in enumerate(items):
            yield item
            bar.update(i + 1)
    finally:
        bar.close()
