"""Values a rule computes during analysis from its inputs alone, kept between runs in the workspace's
state directory: a pure function's result, looked up by a key the rule derives from every input
(e.g. the digest of the files it reads). A build that re-runs analysis (a BUILD file changed) then
does not redo slow work whose inputs did not change. `hb clean` removes them with the state."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from blake3 import blake3

_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class AnalysisMemo:
    def __init__(self, directory: Path | None):
        self.directory = directory

    def get(self, namespace: str, key: str, compute):
        """compute()'s value (JSON) for `key`: the one stored for it, else computed now and stored.
        A file that is missing, unreadable or for another key is computed again, never trusted."""
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"memo namespace {namespace!r} is not [a-z0-9_.-]+")
        if self.directory is None:
            return compute()
        path = self.directory / f"{namespace}-{blake3(key.encode()).hexdigest()[:32]}.json"
        try:
            stored = json.loads(path.read_bytes())
            if isinstance(stored, dict) and stored.get("key") == key and "value" in stored:
                return stored["value"]
        except (OSError, ValueError):
            pass
        value = compute()
        data = json.dumps({"key": key, "value": value}, sort_keys=True).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.hb-tmp-{os.getpid()}-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            pass  # a memo that cannot be kept is computed again next time
        return value
