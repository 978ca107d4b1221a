"""`hb lock`: the one step that is allowed to look at the world (a channel, a registry) and write
what it saw into the source tree, where it is committed. Rules opt in with a `lock` hook."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from .errors import Location, UsageError
from .label import Label


@dataclass(frozen=True)
class LockOutcome:
    written: tuple[str, ...] = ()  # workspace-relative files written
    stale: tuple[str, ...] = ()  # with check=True: why the committed lock no longer matches


class LockRequest:
    """What a rule's lock hook receives."""

    def __init__(self, session, label: Label, rule_name: str, attrs: dict, location: Location, *,
                 update: tuple[str, ...], check: bool):
        self._session = session
        self.label = label
        self.rule = rule_name
        self.attrs = attrs
        self.location = location
        self.update = update
        self.check = check
        self.workspace = session.workspace
        self.settings = session.settings
        self.reporter = session.reporter

    def source_path(self, name: str) -> Path:
        """A path in the target's package directory, for a file `hb lock` reads or writes there. The
        checkout chose both the name and what lies at it: a path that is, or lies under, a link leading
        out of the workspace or into hb-out/ is refused (AnalysisError, resolve_source), as for every
        source file. A committed `env/conda-lock.yml -> ~/.bashrc` had `hb lock` write its YAML over
        the user's file."""
        from .workspace import resolve_source

        rel = f"{self.label.package}/{name}" if self.label.package else name
        resolve_source(self.workspace.root, rel)
        return self.workspace.package_dir(self.label.package) / name

    def write_source(self, path: Path, data: bytes) -> None:
        """Write a file source_path gave: checked again, then written to a new file beside where it
        resolves and renamed over it, so a reader (or a killed `hb lock`) never sees half a lock and
        nothing is written through a link (a link inside the workspace keeps pointing at the file)."""
        import os
        import tempfile

        from .store.local import file_mode
        from .workspace import resolve_source

        real = resolve_source(self.workspace.root, self.relpath(path))
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name[:64]}.hb-tmp-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, file_mode())
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def relpath(self, path: Path) -> str:
        return self.workspace.relpath(path)

    def build(self, labels) -> dict[str, list[Path]]:
        """Build targets (e.g. a local channel) and return their outputs as absolute paths."""
        summary = self._session.build([str(label) for label in labels])
        root = self.workspace.root
        return {label: [root / out["path"] for out in outs] for label, outs in summary.targets.items()}

    def state_dir(self) -> Path:
        """A per-workspace scratch directory in the cache (e.g. for repodata caches)."""
        path = self._session.state_dir / "lock"
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_lock(session, patterns: list[str], current_package: str, *, update=(), check=False) -> list[tuple[str, LockOutcome]]:
    """Lock without analysing the targets first: a rule may need its lock to analyse at all."""
    from .analysis import Analyzer

    rules = session.rules()
    analyzer = Analyzer(session.workspace, rules, session.state_dir / "memo")
    labels = analyzer.expand(patterns, current_package)
    outcomes = []
    for label in labels:
        target = analyzer.loader.load(label.package).targets[label.name]
        if rules[target.rule].lock is None:
            continue
        request = LockRequest(session, label, target.rule, target.attrs, target.location,
                              update=tuple(update), check=check)
        outcomes.append((str(label), rules[target.rule].lock(request)))
    if not outcomes:
        raise UsageError(f"none of {' '.join(patterns)} can be locked",
                         hint="hb lock takes targets of lockable rules, e.g. conda_lock or deb_base")
    return outcomes

