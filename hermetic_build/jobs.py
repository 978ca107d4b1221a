"""Work started on threads of its own while the caller goes on (deleting a replaced tree, the build's
syncfs), joined later: wait() waits for every job started so far and raises the first error one of
them met, so a failure on another thread is never lost."""

from __future__ import annotations

import threading


class BackgroundJobs:
    def __init__(self, name: str, *, daemon: bool = False):
        self.name = name
        self.daemon = daemon  # False: the interpreter also waits for the jobs before it exits
        self._lock = threading.Lock()
        self._jobs: list[tuple[threading.Thread, list[BaseException]]] = []

    def start(self, work) -> None:
        """Run work() on a new thread (any thread may start jobs)."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - raised by wait()
                errors.append(exc)

        thread = threading.Thread(target=run, name=self.name, daemon=self.daemon)
        with self._lock:
            self._jobs.append((thread, errors))
        thread.start()

    def wait(self) -> None:
        """Wait for every job started so far; raise the first error one of them met."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for thread, _errors in jobs:
            thread.join()
        for _thread, errors in jobs:
            if errors:
                raise errors[0]
