"""The archive check (archive.check_archive) of hb's fetches, run for many archives in one process
that hb starts in bubblewrap (checker.py): the archives are untrusted, and reading them means
decompressing and parsing zip, tar, zstd, bzip2 and JSON. The process sees the fetched files and
the Python installation read-only, has no network and nothing writable but its own /tmp.

Protocol, one JSON object a line: {"path", "filename", "max_ratio", "kind": "conda" | "wheel"} in on
stdin, {"ok": true} or {"ok": false, "message": ..., "hint": ...} out on stdout. It ends when stdin
closes.
"""

import importlib.util
import json
import os
import sys


def main() -> None:
    setup = json.loads(sys.argv[1])
    sys.path[:0] = [*setup["sys_path"], os.path.dirname(setup["archive"])]  # archive.py imports zipdir.py beside it
    spec = importlib.util.spec_from_file_location("hb_conda_archive", setup["archive"])
    archive = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(archive)
    from hermetic_build.errors import HbError

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request.get("kind", "conda") == "wheel":
                archive.check_wheel(request["path"], request["filename"], request["max_ratio"])
            else:
                archive.check_archive(request["path"], request["filename"],
                                      archive.UnpackLimits(max_ratio=request["max_ratio"]))
            reply = {"ok": True}
        except HbError as exc:
            reply = {"ok": False, "message": exc.message, "hint": exc.hint}
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure; the next archive goes on
            reply = {"ok": False, "message": f"{request['filename']}: the archive check failed: "
                                             f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    # stdin closed: hb is done with it (and waits for it to exit); nothing is left to finalize
    os._exit(0)


if __name__ == "__main__":
    main()
