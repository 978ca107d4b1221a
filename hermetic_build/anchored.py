"""Opening paths beneath a directory descriptor, never following a symbolic link.

Outputs are collected from a sandbox whose content a command controlled: any component of a declared
path may have been replaced by a link to somewhere on the host. Every component is opened relative
to its parent's descriptor with O_NOFOLLOW, content is read from the descriptor that was opened, and
a link where a file or directory is expected is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the type check must not block the open.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RefusedPath(Exception):
    """A path that cannot be collected without following a link (or is not a file or directory)."""


def describe(dir_fd: int, name: str, shown: str) -> str:
    """What `name` in dir_fd is, for an error message: a link (with its target) or its file type."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return f"{shown} changed while it was being collected"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return f"{shown} is a symbolic link (-> {target})"
    if stat.S_ISDIR(st.st_mode):
        return f"{shown} is a directory"
    if stat.S_ISREG(st.st_mode):
        return f"{shown} is a regular file"
    return f"{shown} is a special file (mode {stat.filemode(st.st_mode)})"


def open_directory(base_fd: int, rel: str) -> int:
    """Open the directory `rel` (components separated by "/") beneath base_fd, one component at a
    time with O_NOFOLLOW. Raises RefusedPath if a component is a link or not a directory,
    FileNotFoundError if one is missing. The caller closes the returned descriptor."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RefusedPath(f"{rel} leaves the directory it is relative to")
    fd = os.dup(base_fd)
    walked = []
    try:
        for part in parts:
            walked.append(part)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RefusedPath(describe(fd, part, "/".join(walked))) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_subdirectory(dir_fd: int, name: str, shown: str) -> int:
    """Open the directory entry `name` of dir_fd, refusing a link."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RefusedPath(describe(dir_fd, name, shown)) from None
        raise


def open_scanned_file(dir_fd: int, name: str, scanned: os.stat_result, shown: str) -> tuple[int, os.stat_result]:
    """Open `name` of dir_fd for reading if it is still the regular file a directory listing just
    found (`scanned`, its lstat: same device and inode), never through a link; RefusedPath if not.
    open_regular_file without its own stat (the listing made it) and without clearing O_NONBLOCK,
    which a regular file's reads ignore. Returns the descriptor and its fstat."""
    if not stat.S_ISREG(scanned.st_mode):
        raise RefusedPath(f"{describe(dir_fd, name, shown)}, not a regular file")
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedPath(f"{describe(dir_fd, name, shown)}, not a regular file") from None
        raise
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (scanned.st_dev, scanned.st_ino):
        os.close(fd)
        raise RefusedPath(f"{shown} changed while it was being collected")
    return fd, opened


def open_regular_file(dir_fd: int, name: str, shown: str | None = None) -> tuple[int, os.stat_result]:
    """Open the regular file `name` of dir_fd for reading, refusing a link or a special file (which
    is never opened). Returns the descriptor (blocking) and its fstat."""
    shown = shown or name
    fd, opened = open_scanned_file(dir_fd, name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False), shown)
    os.set_blocking(fd, True)
    return fd, opened
