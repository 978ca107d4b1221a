"""genrule: run a bash command over declared inputs to produce declared outputs."""

from __future__ import annotations

import re

from hermetic_build.api import DefaultInfo, Label, attr, rule

_LOCATION_RE = re.compile(r"\$\(locations? ([^)]+)\)")


def _genrule_impl(ctx):
    srcs = ctx.files("srcs")
    tools = ctx.files("tools")
    outs = []
    for out in ctx.attr.outs:
        outs.append(ctx.declare_file(out))
    if not outs:
        ctx.fail("genrule needs at least one entry in 'outs'")
    by_label = {str(k): v for name in ("srcs", "tools") for k, v in ctx.files_by_label(name).items()}

    def location(match):
        text = match.group(1).strip()
        label = str(Label.parse(text, ctx.label.package))
        if label not in by_label:
            ctx.fail(f"$(location {text}): {text} is not in srcs or tools")
        files = by_label[label]
        if match.group(0).startswith("$(location ") and len(files) != 1:
            ctx.fail(f"$(location {text}) expands to {len(files)} files; use $(locations {text})")
        return " ".join(f.path for f in files)

    cmd = _LOCATION_RE.sub(location, ctx.attr.cmd)
    cmd = (cmd.replace("$(SRCS)", " ".join(f.path for f in srcs))
              .replace("$(OUTS)", " ".join(f.path for f in outs))
              .replace("$(RULEDIR)", outs[0].path[: -len(ctx.attr.outs[0]) - 1]))
    ctx.actions.run_shell(cmd=cmd, inputs=[*srcs, *tools], outputs=outs, mnemonic="Genrule",
                          description=f"Genrule {ctx.label}")
    return [DefaultInfo(files=tuple(outs))]


genrule = rule(
    "genrule",
    _genrule_impl,
    attrs={
        "srcs": attr.label_list(allow_files=True, doc="files or targets whose outputs are inputs"),
        "outs": attr.string_list(mandatory=True, doc="output files, relative to hb-out/<pkg>/<name>/"),
        "cmd": attr.string(mandatory=True, doc="bash command; $(SRCS), $(OUTS), $(RULEDIR), $(location L), $(locations L)"),
        "tools": attr.label_list(allow_files=True, doc="executables the command runs"),
    },
    doc="Run a bash command in a sandbox that holds only the declared inputs.",
)
