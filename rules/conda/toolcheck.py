"""Host tools a conda_channel build needs, checked before py-rattler-build runs: a recipe whose build
script calls the C compiler fails deep inside rattler-build (`cc: command not found` in a log inside
the sandbox) when there is none, so hb says so first, in one line, with the command that installs it."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


from hermetic_build.api import ActionFailed, HbError

from .yamlload import safe_loader


@dataclass(frozen=True)
class HostTool:
    """A program some recipes' build scripts run from the host."""

    what: str  # "a C compiler"
    program: str  # what the scripts call, looked up on PATH
    calls: re.Pattern  # a command word in a build script that runs it
    install: str  # the Debian command that installs it


C_COMPILER = HostTool(
    "a C compiler", "cc",
    re.compile(r"(?:^|[\s;&|(`])(?:cc|gcc|\$\{?CC\}?)(?=\s|$)", re.MULTILINE),
    "apt-get install gcc libc6-dev",
)
HOST_TOOLS = (C_COMPILER,)


class MissingHostTool(HbError):
    """One line, no hint about the sandbox: nothing ran yet, and the fix is an install command."""

    exit_code = ActionFailed.exit_code
    family = ActionFailed.family


def build_scripts(recipe: Path) -> str:
    """The text of a recipe's build script: build.script inline (a string, a list of lines, or
    {content: ...}), or the script file it names next to the recipe (build.sh by default)."""
    import yaml  # here: most builds never read YAML (PyYAML's import compiles its regexes)
    try:
        data = yaml.load(recipe.read_text(), Loader=safe_loader()) or {}
    except (OSError, yaml.YAMLError, RecursionError):
        return ""  # rattler-build reports a broken recipe itself, with its path
    outputs = data.get("outputs") if isinstance(data.get("outputs"), list) else [data]
    texts = []
    for output in outputs:
        build = output.get("build") if isinstance(output, dict) else None
        script = build.get("script") if isinstance(build, dict) else None
        if isinstance(script, dict):
            script = script.get("content") or script.get("file")
        if script is None:
            script = "build.sh"
        if isinstance(script, list):
            texts.extend(str(line) for line in script)
        elif isinstance(script, str) and "\n" not in script and (recipe.parent / script).is_file():
            texts.append((recipe.parent / script).read_text(errors="replace"))
        elif isinstance(script, str) and not script.endswith((".sh", ".bat")):
            texts.append(script)
    return "\n".join(texts)


def check_host_tools(execution) -> None:
    """Fail in one line when a recipe of this channel calls a host tool that is not on PATH."""
    path = os.environ.get("PATH", os.defpath)
    for tool in HOST_TOOLS:
        if shutil.which(tool.program, path=path):
            continue
        for build in execution.params["builds"]:
            if tool.calls.search(build_scripts(execution.declared_input(build["recipe"]))):
                raise MissingHostTool(
                    f"conda_channel {execution.action.owner} needs {tool.what}: {build['recipe']} runs "
                    f"`{tool.program}`, which was not found on PATH (Debian: {tool.install})")
