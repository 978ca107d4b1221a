"""Opening the state hb keeps between runs (the analysis cache, the no-op record, file digests):
pickles, which load as Python objects, so whoever can write one runs code as you. hb writes them
with mode 0600 in its own cache; one that is not a regular file of yours, writable only by you, is
taken as absent (the analysis is redone), never loaded. The cache directory itself must be yours
(LocalStore refuses another user's): this holds the line inside it too, where a group-writable
directory lets other users add files."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def open_own_file(path: Path | str):
    """A binary reader of `path` if it is a regular file owned by this user and writable by no one
    else (opened without following a link); None otherwise (missing, a link, another's file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")
