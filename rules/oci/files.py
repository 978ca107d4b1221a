"""oci_files: files of the workspace or other targets' outputs as one image layer (an app layer)."""

from __future__ import annotations

import os
import shutil

from hermetic_build.api import ActionFailed, DefaultInfo, attr, register_action_kind, relative_path, rule

from .layers import declare_layers


def _oci_files_impl(ctx):
    files = ctx.files("srcs")
    if not files:
        ctx.fail("srcs is empty: an app layer needs at least one file")
    # a file lands at <prefix>/<its path in the package> (a generated one: relative to its target's outputs)
    placed = {}
    for f in files:
        rel = f.short_path()
        if f.is_source and ctx.label.package and rel.startswith(ctx.label.package + "/"):
            rel = rel[len(ctx.label.package) + 1:]
        if rel in placed:
            ctx.fail(f"two files would be placed at {ctx.attr.prefix}/{rel}: {placed[rel]} and {f.path}")
        placed[rel] = f.path
    tree = ctx.declare_directory("tree", internal=True)
    ctx.actions.declare(mnemonic="OciFiles", kind="oci.files", inputs=files, outputs=[tree],
                        params={"files": dict(sorted(placed.items())), "mode": ctx.attr.mode},
                        description=f"OciFiles {ctx.label} ({len(files)} files)")
    layers = declare_layers(ctx, tree, root=ctx.attr.prefix, split="single", platform=ctx.platform, name="layers")
    return [DefaultInfo(files=()), layers]


def _collect(execution) -> None:
    out = execution.path(execution.action.outputs[0])
    out.mkdir(parents=True, exist_ok=True)
    mode = execution.params["mode"]
    for rel, source in execution.params["files"].items():
        # both named by params: outside bytes on a remote worker, where this runs outside bubblewrap
        src, dest = execution.declared_input(source), out / relative_path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            raise ActionFailed(f"{source} is a directory; list files (e.g. with glob) instead")
        shutil.copyfile(src, dest)
        os.chmod(dest, int(mode, 8) if mode else (0o755 if os.access(src, os.X_OK) else 0o644))


register_action_kind("oci.files", "1", _collect)

oci_files = rule(
    "oci_files",
    _oci_files_impl,
    attrs={
        "srcs": attr.label_list(mandatory=True, allow_files=True, doc="files or targets whose outputs go in"),
        "prefix": attr.string(default="/app", doc="where the files go in the image"),
        "mode": attr.string(doc="octal mode for every file, e.g. '0644' (default: 0755 if executable, else 0644)"),
    },
    doc="An image layer holding the given files under `prefix` (use in oci_image(layers = [...])).",
)
