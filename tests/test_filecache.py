import os
import subprocess
import sys

from hermetic_build.leftovers import sweep


def test_a_save_killed_before_its_rename_leaves_nothing_the_next_build_keeps(tmp_path):
    """kill -9 between writing the digest cache and renaming it left .filecache-XXXXXXXX in the
    workspace state for good: a name the sweep of dead processes' files did not know."""
    state = tmp_path / "state"
    source = tmp_path / "src.txt"
    source.write_text("x")
    os.utime(source, (0, 0))  # old enough to be remembered
    code = ("import os, sys\n"
            "from pathlib import Path\n"
            "from hermetic_build.filecache import FileDigestCache\n"
            "cache = FileDigestCache(Path(sys.argv[1]) / 'file-digests.pickle')\n"
            "cache.digest(Path(sys.argv[2]))\n"
            "os.replace = lambda *a: os.kill(os.getpid(), 9)\n"  # killed just before the rename
            "cache.save()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(state), str(source)])
    assert proc.returncode == -9
    assert len(os.listdir(state)) == 1  # the temp file, written
    assert sweep(state) == 1
    assert os.listdir(state) == []
