"""genrule: run a bash command over declared inputs to produce declared outputs."""

from __future__ import annotations

import re

from hermetic_build.api import DefaultInfo, Label, LabelSyntaxError, attr, rule

_LOCATION_RE = re.compile(r"\$\(locations? ([^)]+)\)")


def _genrule_impl(ctx):
    by_label = {**ctx.files_by_label("srcs"), **ctx.files_by_label("tools")}
    srcs = tuple(f for label in ctx.attr.srcs for f in by_label[label])
    tools = tuple(f for label in ctx.attr.tools for f in by_label[label])
    outs = [ctx.declare_file(out) for out in ctx.attr.outs]
    if not outs:
        ctx.fail("genrule needs at least one entry in 'outs'")

    def location(match):
        text = match.group(1).strip()
        try:
            label = Label.parse(text, ctx.label.package)
        except LabelSyntaxError as exc:
            ctx.fail(f"$(location {text}) in cmd: {exc}", hint="labels look like //pkg:name or :name")
        if label not in by_label:
            ctx.fail(f"$(location {text}): {text} is not in srcs or tools")
        files = by_label[label]
        if match.group(0).startswith("$(location ") and len(files) != 1:
            ctx.fail(f"$(location {text}) expands to {len(files)} files; use $(locations {text})")
        return " ".join(f.path for f in files)

    cmd = _LOCATION_RE.sub(location, ctx.attr.cmd) if "$(location" in ctx.attr.cmd else ctx.attr.cmd
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
