import re

import pytest
from support import require_tool

from rules.oci.debs import _URI_LINE, _print_uris


@pytest.mark.slow
def test_private_apt_lists_answer_without_the_systems(tmp_path):
    """A fresh machine may have no apt package lists: hb lock then keeps lists of its own."""
    require_tool("apt-get")
    proc = _print_uris(["busybox-static"], tmp_path / "apt")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "busybox-static" in line)
    match = _URI_LINE.match(line)
    assert match and re.fullmatch(r"[0-9a-f]{64}", match["sha256"])
    assert any((tmp_path / "apt/lists").glob("*_Packages*"))
