"""Workspaces for attacks from inside an action: a victim directory on the host, a rule with a
directory output, and hb run with or without bubblewrap."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from support import Workspace

SECRET = b"TOPSECRET-victim-bytes-7d1f"

# A rule with a directory output whose content a bash command makes ($(OUT) is the directory).
RULE_MODULE = '''
from hermetic_build.api import DefaultInfo, attr, rule


def _impl(ctx):
    out = ctx.declare_directory("tree")
    ctx.actions.run_shell(cmd=ctx.attr.cmd.replace("$(OUT)", out.path), inputs=[], outputs=[out],
                          mnemonic="TreeOut")
    return [DefaultInfo(files=(out,))]


tree_out = rule("tree_out", _impl, attrs={"cmd": attr.string(mandatory=True)})
'''


class SandboxWorkspace(Workspace):
    """A workspace whose hb loads the tree_out rule; with bwrap=False, hb finds no bwrap on PATH
    (the fallback mode, where commands are not isolated but outputs must still be collected safely)."""

    def __init__(self, root: Path, cache: Path, *, bwrap: bool):
        super().__init__(root, cache)
        self.bwrap = bwrap
        (root / "hermetic.toml").write_text('rule_modules = ["rules", "advrules"]\n')
        (root / "advrules.py").write_text(RULE_MODULE)
        self.empty_path = root.parent / "path-without-bwrap"
        self.empty_path.mkdir(exist_ok=True)
        self.hb("trust")  # a rule module of its own: imported into hb only once trusted

    def env(self) -> dict:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.root), env.get("PYTHONPATH", "")) if p)
        if not self.bwrap:
            env["PATH"] = str(self.empty_path)
        return env


def make_victim(parent: Path) -> Path:
    """A directory outside any sandbox holding a secret file (mode 0644) and a subdirectory."""
    victim = parent / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "secret.txt").write_bytes(SECRET)
    os.chmod(victim / "secret.txt", 0o644)
    (victim / "inner" / "more.txt").write_bytes(SECRET + b"-inner")
    return victim


def assert_victim_intact(victim: Path) -> None:
    assert (victim / "secret.txt").read_bytes() == SECRET
    st = os.stat(victim / "secret.txt")
    assert stat.S_IMODE(st.st_mode) == 0o644, oct(st.st_mode)
    assert st.st_nlink == 1
    assert (victim / "inner" / "more.txt").read_bytes() == SECRET + b"-inner"


def files_containing(root: Path, needle: bytes) -> list[str]:
    """Regular files under root (links not followed) whose content holds needle."""
    found = []
    if not root.exists():
        return found
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            if needle in path.read_bytes():
                found.append(str(path))
    return found
