"""`python -I -S opened.py --tmpfs DIR ... --bind PATH ... -- COMMAND...`, run as root: COMMAND in a
mount namespace of its own where each DIR is an empty 0755 tmpfs and each PATH (under one of them) is
bound back at its own path, so that a user who cannot enter DIR (root's 0700 home) reaches PATH.

confine.py starts a root worker's sandbox through it, when the sandbox's user could not reach the
Python, the venv or hb otherwise (its module doc). The host's tree is left as it is: nothing changes
mode or owner, and the namespace's mounts are private (none propagates to the host). This process
execs COMMAND (`setpriv`, then bubblewrap), never forks, so the process the worker started is the
sandbox's bubblewrap still: the worker ends it by its PID, and it dies with the worker.

Standard library only, run with -I -S: nothing of the environment or of site-packages reaches root."""

import ctypes
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    tmpfs = [options[i + 1] for i in range(0, len(options), 2) if options[i] == "--tmpfs"]
    binds = [options[i + 1] for i in range(0, len(options), 2) if options[i] == "--bind"]
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    # the paths to bind back, held before a tmpfs hides them
    held = [(path, os.open(path, os.O_PATH)) for path in binds]
    for directory in tmpfs:
        _check(libc.mount(b"hb-opened", os.fsencode(directory), b"tmpfs", 0, b"mode=0755"), f"tmpfs on {directory}")
    os.umask(0o022)
    for path, fd in held:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        _check(libc.mount(f"/proc/self/fd/{fd}".encode(), os.fsencode(path), None, MS_BIND | MS_REC, None),
               f"binding {path}")
        os.close(fd)
    os.execv(command[0], command)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except OSError as exc:
        sys.exit(f"hb: opening the sandbox's paths: {exc}")
