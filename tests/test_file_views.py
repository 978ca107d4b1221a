"""Read-only file inputs (ActionKind.read_only_files): an action's generated file inputs are hard links
to their CAS blobs in the sandbox's inputs/ directory, bound read-only in bubblewrap; the command reads
them there and can neither write, re-mode nor remove them, so the CAS is never changed through them."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

from support import require_tool

from hermetic_build.action import Action, File, make_params_json, register_action_kind
from hermetic_build.executor import Executor
from hermetic_build.label import Label
from hermetic_build.store.local import LocalStore
from hermetic_build.workspace import Settings


class _Quiet:
    def start(self, total): pass
    def action_done(self, action, cached, duration): pass
    def finish(self): pass
    def warn(self, message): pass


def _produce(execution) -> None:
    (execution.execroot / execution.action.outputs[0].path).write_text("payload\n")


def _consume(execution) -> None:
    inp = execution.action.inputs[0]
    seen["host"] = execution.input_path(inp)
    seen["inside"] = execution.sandbox_path(inp)
    seen["copied"] = (execution.execroot / inp.path).exists()
    script = (f"cat {seen['inside']} > out.txt; "
              f"for p in {seen['inside']} /hb/inputs/{inp.path}; do "
              "  if echo x >> $p; then echo WROTE; fi; chmod 666 $p && echo CHMOD; rm -f $p && echo REMOVED; done; "
              f"ln {seen['inside']} /hb/execroot/hardlink 2>/dev/null && echo LINKED; true")
    code = execution.run_command(["/bin/sh", "-c", script])
    assert code == 0, bytes(execution.stderr).decode()
    os.replace(execution.execroot / "out.txt", execution.execroot / execution.action.outputs[0].path)


seen: dict = {}


def test_file_inputs_are_read_only_links_to_the_cas(tmp_path):
    require_tool("bwrap")
    register_action_kind("test.produce", "1", _produce)
    register_action_kind("test.consume_ro", "1", _consume, read_only_files=True)
    owner = Label("p", "t")
    made = File("hb-out/p/made.txt", owner)
    actions = [Action(owner, "Make", "test.produce", "1", (), (made,), make_params_json({}), "linux-64"),
               Action(owner, "Read", "test.consume_ro", "1", (made,), (File("hb-out/p/read.txt", owner),),
                      make_params_json({}), "linux-64")]
    store = LocalStore(tmp_path / "cache")
    executor = Executor(SimpleNamespace(settings=Settings(cache_dir=tmp_path / "cache")), store, actions, None,
                        jobs=1, reporter=_Quiet())
    try:
        stats = executor.run([0, 1])
    finally:
        executor.close()
    blob_digest = stats.records[0].result.outputs[0].digest
    blob = store.blob_path(blob_digest)
    assert store.get_blob(stats.records[1].result.outputs[0].digest) == b"payload\n"  # read through the link
    assert seen["inside"] == "/hb/inputs/hb-out/p/made.txt" and not seen["copied"]
    assert seen["host"].parent.name == "p" and seen["host"].name == "made.txt"
    stdout = store.get_blob(stats.records[1].result.stdout)
    stderr = store.get_blob(stats.records[1].result.stderr)
    for word in (b"WROTE", b"CHMOD", b"REMOVED", b"LINKED"):
        assert word not in stdout, stdout
    assert b"Read-only file system" in stderr, stderr
    # the blob is unchanged: same bytes, still read-only, no link left behind (the sandbox is gone)
    st = os.stat(blob)
    assert blob.read_bytes() == b"payload\n" and stat.S_IMODE(st.st_mode) == 0o444 and st.st_nlink == 1
