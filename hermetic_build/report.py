"""Progress and messages: a rich progress bar on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
import threading

from .redact import for_terminal


class Reporter:
    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.total = 0
        self.done = 0
        self._lock = threading.Lock()
        self._progress = None
        self._task = None

    def info(self, message: str) -> None:
        if not self.quiet:
            self._print(message)

    def warn(self, message: str) -> None:
        self._print(f"warning: {message}")

    def _print(self, message: str) -> None:
        message = for_terminal(message)  # as cli.echo: masked credentials, escaped control characters
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(message, markup=False, highlight=False)
            else:
                print(message, file=self.stream, flush=True)

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        if self.quiet or total == 0 or not self.stream.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]building"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.description}", markup=False),
                                  console=Console(file=self.stream), transient=True)
        self._progress.start()
        self._task = self._progress.add_task("", total=total)

    def action_done(self, action, cached: bool, duration: float) -> None:
        with self._lock:
            self.done += 1
            if self._progress is not None:
                self._progress.update(self._task, advance=1, description=for_terminal(action.description))
                return
        if not self.quiet and not cached:
            self._print(f"[{self.done}/{self.total}] {action.description} ({duration:.2f}s)")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
