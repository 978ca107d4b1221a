"""Temporary files and sandboxes that carry the PID of the hb process that made them, and the sweep
that removes those whose process is gone (a build killed with kill -9 leaves them behind).

Only names of exactly these shapes are ever removed, and removal never follows a link: a directory
entry is deleted as a whole only if it is itself a real directory; anything else is unlinked."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat

# sandboxes (sb-) and store temp files (w-) in the cache's tmp/; .<name>.hb-tmp-<pid>-<random> beside
# a file being written atomically (hb-out/, the cache); .hb-tmp-<pid>-<random> directories in hb-out/
_OWNED = re.compile(
    r"(?:sb|w)-(?P<a>[0-9]{1,10})-[A-Za-z0-9_]{1,32}"
    r"|\..+\.hb-tmp-(?P<b>[0-9]{1,10})(?:-[A-Za-z0-9_]{1,32})?"
    r"|\.hb-tmp-(?P<c>[0-9]{1,10})-[A-Za-z0-9_]{1,32}",
    re.DOTALL,
)


def sandbox_prefix() -> str:
    return f"sb-{os.getpid()}-"


def store_temp_prefix() -> str:
    return f"w-{os.getpid()}-"


def publish_temp_prefix() -> str:
    return f".hb-tmp-{os.getpid()}-"


def temp_name_beside(name: str) -> str:
    """A fresh hidden name in the directory of `name`, owned by this process."""
    return f".{name[:64]}.hb-tmp-{os.getpid()}-{secrets.token_hex(4)}"


def owner_pid(name: str) -> int | None:
    """The PID in a name hb made for a temporary file or sandbox; None for any other name."""
    match = _OWNED.fullmatch(name)
    if match is None:
        return None
    return int(match.group("a") or match.group("b") or match.group("c"))


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a PID we could have written: never treat as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:
        return True
    return True


def sweep(directory) -> int:
    """Remove hb's temporary entries in `directory` (not below) whose process is gone. Returns the
    number removed; a directory that does not exist or cannot be read is left alone."""
    removed = 0
    me = os.getpid()
    try:
        it = os.scandir(directory)
    except OSError:
        return 0
    with it:
        for entry in it:
            pid = owner_pid(entry.name)
            if pid is None or pid == me or pid_alive(pid):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)  # never follows a link inside
                else:
                    os.unlink(entry.path)
                removed += 1
    return removed


def remove_tree(path) -> None:
    """Remove a directory tree hb made, whatever modes its directories were given (a tree may have
    0o555 or 0o000 directories): where removing fails, each real directory is made writable and
    searchable by its owner and the removal tried again. Links are removed, never followed."""
    def open_up(top: str) -> None:
        stack = [top]
        while stack:
            p = stack.pop()
            with contextlib.suppress(OSError):
                os.chmod(p, 0o700)  # p was listed as a real directory (not a link)
            with contextlib.suppress(OSError), os.scandir(p) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))

    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
    except FileNotFoundError:
        return
    shutil.rmtree(path, ignore_errors=True)  # the usual case: nothing read-only, one pass
    if os.path.lexists(path):
        open_up(str(path))
        shutil.rmtree(path, ignore_errors=True)
