"""conda_channel: build conda packages from recipe.yaml files with py-rattler-build, offline, into
an indexed local channel. The channel is an action output like any other, so it is cached."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from dataclasses import dataclass

from hermetic_build.api import ActionFailed, DefaultInfo, File, Provider, attr, register_action_kind, rule

from hermetic_build.api import host_platform

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
    from rattler.index import index_fs

    (directory / NOARCH).mkdir(parents=True, exist_ok=True)
    result = index_fs(directory)
    if inspect.iscoroutine(result):
        asyncio.run(result)


def _build_channel(execution) -> None:
    from rattler_build import PlatformConfig, RenderConfig, Stage0Recipe

    check_host_tools(execution)  # say in one line what is missing, before rattler-build fails on it
    out = execution.execroot / execution.params["out"]
    out.mkdir(parents=True, exist_ok=True)
    index_channel(out)
    os.environ.setdefault("SOURCE_DATE_EPOCH", str(execution.settings.source_date_epoch))
    for build in execution.params["builds"]:
        recipe_path = execution.execroot / build["recipe"]
        try:
            recipe = Stage0Recipe.from_file(str(recipe_path))
            render = RenderConfig(platform=PlatformConfig(target_platform=build["platform"]))
            results = recipe.run_build(output_dir=str(out), channels=[out.as_uri()], no_build_id=True,
                                       no_include_recipe=True, render_config=render)
        except Exception as exc:  # py-rattler-build's errors carry the build log
            raise ActionFailed(f"building {build['recipe']} for {build['platform']} failed: {exc}") from None
        for result in results:
            execution.stdout += f"built {result}\n".encode()
        index_channel(out)
    shutil.rmtree(out / "bld", ignore_errors=True)
    for leftover in ("src_cache",):
        shutil.rmtree(out / leftover, ignore_errors=True)


register_action_kind("conda.channel", "1", _build_channel)

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
