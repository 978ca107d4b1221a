"""conda_channel: build conda packages from recipe.yaml files with py-rattler-build, offline, into
an indexed local channel. The channel is an action output like any other, so it is cached."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hermetic_build.api import (
    ActionFailed,
    DefaultInfo,
    File,
    Provider,
    attr,
    host_platform,
    register_action_kind,
    rule,
)

from .toolcheck import check_host_tools

NOARCH = "noarch"


@dataclass(frozen=True)
class CondaChannelInfo(Provider):
    """A local channel: the directory holding <subdir>/repodata.json and the packages."""

    directory: File


def _conda_channel_impl(ctx):
    recipes = ctx.files("recipes")
    srcs = ctx.files("srcs")
    by_path = {f.path: f for f in recipes}
    builds = []
    for recipe in recipes:
        if not recipe.path.endswith("recipe.yaml"):
            ctx.fail(f"recipes must name recipe.yaml files, got {recipe.path}")
        rel = recipe.path[len(ctx.label.package) + 1:] if ctx.label.package else recipe.path
        platforms = ctx.attr.target_platforms.get(rel) or [host_platform()]
        for platform in platforms:
            builds.append({"recipe": recipe.path, "platform": platform})
    unknown = set(ctx.attr.target_platforms) - {
        (p[len(ctx.label.package) + 1:] if ctx.label.package else p) for p in by_path}
    if unknown:
        ctx.fail(f"target_platforms names recipes that are not in 'recipes': {', '.join(sorted(unknown))}")
    out = ctx.declare_directory("channel")
    ctx.actions.declare(
        mnemonic="CondaChannel", kind="conda.channel", inputs=[*recipes, *srcs], outputs=[out],
        params={"builds": builds, "out": out.path}, description=f"CondaChannel {ctx.label} ({len(builds)} builds)",
    )
    return [DefaultInfo(files=(out,)), CondaChannelInfo(out)]


def index_channel(directory) -> None:
    from .channel_worker import index_channel as index

    index(str(directory))


WORKER = Path(__file__).resolve().with_name("channel_worker.py")
PARAMS_FILE = "../tmp/hb-channel-params.json"  # relative to the execution root, inside or outside bwrap


def _build_channel(execution) -> None:
    """Recipe build scripts are arbitrary shell: rattler-build runs in channel_worker.py, in the
    sandbox (no network, only the sandbox writable), never in hb's process."""
    from .stage import WORKER_EXIT, python_paths, worker_python

    check_host_tools(execution)  # say in one line what is missing, before rattler-build fails on it
    sys_path, read_only = python_paths(extra=(str(WORKER), str(WORKER.with_name("package_normalise.py")),
                                              str(WORKER_EXIT)))
    params = {"sys_path": sys_path, "out": execution.params["out"], "builds": execution.params["builds"],
              "source_date_epoch": execution.settings.source_date_epoch}
    (execution.execroot / PARAMS_FILE).write_text(json.dumps(params))
    code = execution.run_command([worker_python(), "-I", str(WORKER), PARAMS_FILE], read_only=read_only)
    if code != 0:
        # the worker printed the build's own output first; the executor shows the stderr tail
        lines = bytes(execution.stderr).decode(errors="replace").strip().splitlines()
        last = next((line for line in reversed(lines) if line.startswith("channel: ")), None)
        raise ActionFailed(last[len("channel: "):] if last else f"the channel build exited with status {code}")


register_action_kind("conda.channel", "3", _build_channel)

conda_channel = rule(
    "conda_channel",
    _conda_channel_impl,
    attrs={
        "recipes": attr.label_list(mandatory=True, allow_files=True,
                                   doc="recipe.yaml files, built in this order (a package's dependencies first)"),
        "srcs": attr.label_list(allow_files=True, doc="other files the recipes read (sources)"),
        "target_platforms": attr.string_list_dict(
            doc="recipe path -> platforms to build it for (default: the host platform; noarch recipes once)"),
    },
    doc="A local conda channel built from recipes with py-rattler-build, offline, and indexed.",
)
