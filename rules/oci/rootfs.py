"""An oci_image's root filesystem as a tree: its layers applied in order (whiteouts included) by
deb_extract.py inside the sandbox, every blob checked against its sha256 there. For env_run(image = ...),
which runs a command with that tree as `/` (read-only). Identical files are stored once: the tree
shares its blobs with the environment and base trees the layers were made from."""

from __future__ import annotations

import json

from hermetic_build.api import ActionFailed, register_action_kind

from .debs import WORKER

PARAMS_FILE = "../tmp/hb-rootfs-params.json"  # relative to the execution root, inside or outside bwrap
IMAGE_FILE = "image.json"


def declare_rootfs(ctx, image):
    """Declare the OciRootfs action of `image` (an OciImageInfo) for ctx's target: (the rootfs directory,
    image.json: the manifest digest and the config's Env and WorkingDir)."""
    rootfs = ctx.declare_directory("rootfs", internal=True)
    facts = ctx.declare_file(IMAGE_FILE, internal=True)
    ctx.actions.declare(
        mnemonic="OciRootfs", kind="oci.rootfs", inputs=[image.layout], outputs=[rootfs, facts],
        params={"layout": image.layout.path, "ref_name": image.ref_name},
        description=f"OciRootfs {ctx.label} ({image.layout.path})",
    )
    return rootfs, facts


def _unpack(execution) -> None:
    from rules.conda.stage import python_paths, worker_python

    params = execution.params
    rootfs, facts = execution.action.outputs
    sys_path, read_only = python_paths(extra=(str(WORKER),))
    worker_params = {"sys_path": sys_path, "layout": params["layout"], "ref_name": params["ref_name"],
                     "out": rootfs.path, "image_out": facts.path}
    (execution.execroot / PARAMS_FILE).write_text(json.dumps(worker_params))
    code = execution.run_command([worker_python(), "-I", str(WORKER), PARAMS_FILE], read_only=read_only)
    if code != 0:
        lines = bytes(execution.stderr).decode(errors="replace").strip().splitlines()
        last = next((line for line in reversed(lines) if line.startswith("extract: ")), None)
        raise ActionFailed(last[len("extract: "):] if last else f"unpacking the image exited with status {code}")


register_action_kind("oci.rootfs", "1", _unpack)
