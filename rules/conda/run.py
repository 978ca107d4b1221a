"""env_run: a command run inside a staged environment, so that a paper's metrics, figures and trained
models are build targets: cached by digest, rebuilt when the code, the data or the environment change,
and covered by `hb verify`.

The sandbox holds the environment's tree at its prefix (read-only), the declared inputs only, no
network, and a scrubbed environment with PYTHONHASHSEED=0 and SOURCE_DATE_EPOCH."""

from __future__ import annotations

import hashlib
import json

from hermetic_build.api import ActionFailed, DefaultInfo, attr, register_action_kind, rule

from .env import CondaEnvInfo
from .fetch import sha256_of_file

PROVENANCE = "provenance.intoto.json"
BUILD_TYPE = "https://hermetic-build.dev/env_run/v1"


def _env_run_impl(ctx):
    dep = ctx.dep("env")
    env = dep.get(CondaEnvInfo) if dep is not None else None
    if env is None:
        ctx.fail(f"env = {ctx.attr.env} is not a conda_env target")
    srcs, data = ctx.files("srcs"), ctx.files("data")
    outs = [ctx.declare_file(out) for out in ctx.attr.outs]
    if not outs:
        ctx.fail("env_run needs at least one entry in 'outs'")
    if PROVENANCE in ctx.attr.outs:
        ctx.fail(f"{PROVENANCE} is the name of the provenance env_run writes; name the output otherwise")
    statement = ctx.declare_file(PROVENANCE)
    lock_data = ctx.read_source(env.lockfile) if env.lockfile.is_source else b""
    cmd = (ctx.attr.cmd.replace("$(SRCS)", " ".join(f.path for f in srcs))
           .replace("$(DATA)", " ".join(f.path for f in data))
           .replace("$(OUTS)", " ".join(f.path for f in outs))
           .replace("$(PREFIX)", env.prefix))
    ctx.actions.declare(
        mnemonic="EnvRun", kind="env.run", inputs=[env.tree, *srcs, *data], outputs=[*outs, statement],
        platform=env.platform,
        params={"cmd": cmd, "tree": env.tree.path, "prefix": env.prefix,
                "env": dict(sorted(ctx.attr.env_vars.items())), "target": str(ctx.label),
                "lock": {"uri": env.lockfile.path, "sha256": hashlib.sha256(lock_data).hexdigest(),
                         "content_hash": env.content_hash, "platform": env.platform}},
        description=f"EnvRun {ctx.label}",
    )
    return [DefaultInfo(files=(*outs, statement))]


def _run(execution) -> None:
    params = execution.params
    prefix = params["prefix"]
    env = {"PATH": f"{prefix}/bin:/usr/bin:/bin", "CONDA_PREFIX": prefix, "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", **params["env"]}
    code = execution.run_command(["/bin/bash", "-c", params["cmd"]], extra_env=env,
                                 mounts=((params["tree"], prefix),))
    if code != 0:
        raise ActionFailed(f"command exited with status {code}")
    outputs = execution.action.outputs
    statement = _statement(execution, outputs[:-1])
    execution.path(outputs[-1]).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")


def _statement(execution, outs) -> dict:
    """in-toto Statement (SLSA provenance v1) of the artifacts: artifact -> environment tree -> lock."""
    params = execution.params
    subjects = []
    for out in outs:
        path = execution.path(out)
        if not path.is_file() or path.is_symlink():
            raise ActionFailed(f"{out.path} was not written as a file by the command")
        subjects.append({"name": out.path, "digest": {"sha256": sha256_of_file(path)}})
    tree = execution.input_entries[params["tree"]].digest
    deps = [{"uri": f"hb-tree:{params['tree']}", "digest": {"blake3": tree.hash},
             "annotations": {"kind": "environment", "prefix": params["prefix"], "size": tree.size}},
            {"uri": params["lock"]["uri"], "digest": {"sha256": params["lock"]["sha256"]},
             "annotations": {"kind": "lockfile", "content_hash": params["lock"]["content_hash"],
                             "platform": params["lock"]["platform"]}}]
    for f in execution.action.inputs:
        if f.path != params["tree"] and not f.is_directory:
            deps.append({"uri": f.path, "digest": {"sha256": sha256_of_file(execution.path(f))},
                         "annotations": {"kind": "input"}})
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {"buildType": BUILD_TYPE,
                                "externalParameters": {"target": params["target"], "cmd": params["cmd"]},
                                "internalParameters": {"source_date_epoch": execution.settings.source_date_epoch},
                                "resolvedDependencies": deps},
            "runDetails": {"builder": {"id": "https://hermetic-build.dev/hb"}},
        },
    }


register_action_kind("env.run", "2", _run)  # 2: writes provenance.intoto.json beside the outputs

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
