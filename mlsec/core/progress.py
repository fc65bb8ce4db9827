"""Progress for every long command: a rich bar on a terminal, one log line per stage elsewhere.

Audits, training runs and GAN training all report through :func:`progress`. On an interactive
terminal each stage is a bar (description, bar, count, rate, elapsed time, time left). When the
output is not a terminal (CI logs, a file) no bar frames are drawn: each stage prints one line
when it finishes, e.g. ``clean: 2000/2000 samples in 3.1 s (645 samples/s)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["Stage", "Tracker", "progress"]


class _Rate(ProgressColumn):
    """Units per second."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="cyan")


@dataclass
class Stage:
    """One stage of a command (a pass over the data, an epoch, an attack at one eps)."""

    tracker: Tracker
    description: str
    total: int | None
    completed: int = 0
    note: str = ""
    task: TaskID | None = None
    start: float = field(default_factory=time.perf_counter)

    def advance(self, amount: int = 1, note: str | None = None) -> None:
        """Count ``amount`` more units done; ``note`` replaces the stage's note (e.g. losses)."""
        self.completed += amount
        if note is not None:
            self.note = note
        if self.task is not None:
            self.tracker.bar.update(self.task, advance=amount, note=self.note)

    def finish(self) -> None:
        """Mark the stage done: the bar fills, or the log line is printed."""
        if self.total is None:
            self.total = self.completed
        if self.task is not None:
            self.tracker.bar.update(self.task, total=self.total, completed=self.total)
        elif self.tracker.enabled:
            self.tracker.log(self)


class Tracker:
    """Stages of one command, drawn as bars or logged as lines."""

    def __init__(self, *, enabled: bool, console: Console, unit: str, transient: bool) -> None:
        self.enabled = enabled
        self.console = console
        self.unit = unit
        self.live = enabled and console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=transient,
            disable=not self.live,
        )

    def stage(self, description: str, total: int | None, completed: int = 0) -> Stage:
        """Start a stage of ``total`` units (``None``: unknown), ``completed`` of them done."""
        stage = Stage(self, description, total, completed)
        if self.live:
            stage.task = self.bar.add_task(description, total=total, completed=completed, note="")
        return stage

    def log(self, stage: Stage) -> None:
        """The line a finished stage leaves in a log."""
        seconds = time.perf_counter() - stage.start
        rate = f" ({stage.completed / seconds:,.0f} {self.unit}/s)" if seconds > 0 else ""
        note = f", {stage.note}" if stage.note else ""
        self.console.print(
            f"{escape(stage.description)}: {stage.completed}/{stage.total} {self.unit} "
            f"in {seconds:.1f} s{rate}{escape(note)}",
            highlight=False,
            soft_wrap=True,
        )


@contextmanager
def progress(
    *,
    enabled: bool,
    console: Console | None = None,
    unit: str = "samples",
    transient: bool = False,
) -> Iterator[Tracker]:
    """A :class:`Tracker` for one command; ``console`` defaults to standard error."""
    tracker = Tracker(
        enabled=enabled, console=console or Console(stderr=True), unit=unit, transient=transient
    )
    with tracker.bar:
        yield tracker
