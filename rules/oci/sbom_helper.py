"""The SBOM documents of a build, made in one helper process instead of in hb's.

Loading spdx-tools (its model type-checks every field with beartype) and cyclonedx-python-lib costs
~0.3 CPU s, more than making the documents. In hb's process that work competes with the build for the
interpreter lock while the layers compress; in a helper started when the build's first actions run
(the oci.sbom kind's warm hook) it uses a core the build leaves idle, and an SBOM action only sends the
model and gets the two documents back. The helper runs sbom_documents.py alone (no rule is loaded):
its inputs are hb's own records of the image, not outside bytes. If it cannot start or answer, the
documents are made in hb's process, with the same bytes."""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
from pathlib import Path

from . import sbom_documents

_DOCUMENTS = Path(sbom_documents.__file__).resolve()
_BOOT = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('hb_sbom_documents', sys.argv[1]); "
         "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; "
         "spec.loader.exec_module(module); module.serve()")

_lock = threading.Lock()
_proc: subprocess.Popen | None = None
_broken = False
_ready_seen = threading.Event()  # the helper said it has loaded the libraries


def start() -> None:
    """Start the helper, once per process (the warm hook); it loads the libraries meanwhile."""
    global _proc, _broken
    with _lock:
        if _proc is not None or _broken:
            return
        try:
            # -I: no PYTHON* variables, no user site, no working directory on sys.path
            _proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, str(_DOCUMENTS)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError:
            _broken = True


def render(model: sbom_documents.SbomModel) -> tuple[str, str]:
    """(SPDX text, CycloneDX text) of the model: from the helper when one was started and answers,
    else made here."""
    global _broken
    with _lock:
        if _proc is not None and not _broken:
            try:
                if not _ready_seen.is_set():
                    if json.loads(_proc.stdout.readline() or "{}") != {"ready": True}:
                        raise ValueError("the SBOM helper did not start")
                    _ready_seen.set()
                _proc.stdin.write(json.dumps(sbom_documents.model_to_json(model)) + "\n")
                _proc.stdin.flush()
                reply = json.loads(_proc.stdout.readline() or "{}")
                if isinstance(reply, dict) and isinstance(reply.get("spdx"), str) and isinstance(reply.get("cdx"), str):
                    return reply["spdx"], reply["cdx"]
            except (OSError, ValueError):
                _broken = True
                _stop()
    return sbom_documents.render(model)  # an error in the model is reported from here


def _stop() -> None:
    global _proc
    proc, _proc = _proc, None
    if proc is None:
        return
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@atexit.register
def _close() -> None:
    with _lock:
        _stop()
