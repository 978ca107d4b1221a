"""env_run: a command run inside a staged environment, so that a paper's metrics, figures and trained
models are build targets: cached by digest, rebuilt when the code, the data or the environment change,
and covered by `hb verify`.

The sandbox holds the environment's tree at its prefix (read-only), the declared inputs only, no
network, and a scrubbed environment with PYTHONHASHSEED=0 and SOURCE_DATE_EPOCH."""

from __future__ import annotations

from hermetic_build.api import ActionFailed, DefaultInfo, attr, register_action_kind, rule

from .env import CondaEnvInfo


def _env_run_impl(ctx):
    dep = ctx.dep("env")
    env = dep.get(CondaEnvInfo) if dep is not None else None
    if env is None:
        ctx.fail(f"env = {ctx.attr.env} is not a conda_env target")
    srcs, data = ctx.files("srcs"), ctx.files("data")
    outs = [ctx.declare_file(out) for out in ctx.attr.outs]
    if not outs:
        ctx.fail("env_run needs at least one entry in 'outs'")
    cmd = (ctx.attr.cmd.replace("$(SRCS)", " ".join(f.path for f in srcs))
           .replace("$(DATA)", " ".join(f.path for f in data))
           .replace("$(OUTS)", " ".join(f.path for f in outs))
           .replace("$(PREFIX)", env.prefix))
    ctx.actions.declare(
        mnemonic="EnvRun", kind="env.run", inputs=[env.tree, *srcs, *data], outputs=outs, platform=env.platform,
        params={"cmd": cmd, "tree": env.tree.path, "prefix": env.prefix,
                "env": dict(sorted(ctx.attr.env_vars.items()))},
        description=f"EnvRun {ctx.label}",
    )
    return [DefaultInfo(files=tuple(outs))]


def _run(execution) -> None:
    params = execution.params
    prefix = params["prefix"]
    env = {"PATH": f"{prefix}/bin:/usr/bin:/bin", "CONDA_PREFIX": prefix, "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", **params["env"]}
    code = execution.run_command(["/bin/bash", "-c", params["cmd"]], extra_env=env,
                                 mounts=((params["tree"], prefix),))
    if code != 0:
        raise ActionFailed(f"command exited with status {code}")


register_action_kind("env.run", "1", _run)

env_run = rule(
    "env_run",
    _env_run_impl,
    attrs={
        "env": attr.label(mandatory=True, doc="a conda_env target: its tree is mounted read-only at its prefix"),
        "srcs": attr.label_list(allow_files=True, doc="code the command runs ($(SRCS))"),
        "data": attr.label_list(allow_files=True, doc="data files or targets it reads ($(DATA))"),
        "outs": attr.string_list(mandatory=True, doc="output files ($(OUTS)), relative to hb-out/<pkg>/<name>/"),
        "cmd": attr.string(mandatory=True, doc="bash command; $(SRCS), $(DATA), $(OUTS), $(PREFIX)"),
        "env_vars": attr.string_dict(doc="more environment variables"),
    },
    doc="Run a command inside a staged environment (no network, declared inputs only); its outputs are "
        "cached build outputs.",
)
