"""env_run: a command run inside a staged environment, so that a paper's metrics, figures and trained
models are build targets: cached by digest, rebuilt when the code, the data or the environment change,
and covered by `hb verify`.

The sandbox holds the environment's tree at its prefix (read-only), or with `image =` the image's whole
root filesystem as `/` (its layers unpacked, base included; read-only), the declared inputs only, no
network, and a scrubbed environment with PYTHONHASHSEED=0 and SOURCE_DATE_EPOCH. Its provenance links
each artifact to the environment tree (or the image's manifest digest) and on to the lock files."""

from __future__ import annotations

import hashlib
import json

from hermetic_build.api import ActionFailed, DefaultInfo, attr, loads_bounded, register_action_kind, rule

from .env import CondaEnvInfo
from .fetch import sha256_of_file

PROVENANCE = "provenance.intoto.json"
BUILD_TYPE = "https://hermetic-build.dev/env_run/v1"


def _env_run_impl(ctx):
    if bool(ctx.attr.env) == bool(ctx.attr.image):
        ctx.fail("env_run takes exactly one of env = (a conda_env) and image = (an oci_image)")
    if ctx.attr.image:
        return _image_run_impl(ctx)
    dep = ctx.dep("env")
    env = dep.get(CondaEnvInfo) if dep is not None else None
    if env is None:
        ctx.fail(f"env = {ctx.attr.env} is not a conda_env target")
    srcs, data = ctx.files("srcs"), ctx.files("data")
    outs, statement = _declared_outputs(ctx)
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


def _declared_outputs(ctx):
    outs = [ctx.declare_file(out) for out in ctx.attr.outs]
    if not outs:
        ctx.fail("env_run needs at least one entry in 'outs'")
    if PROVENANCE in ctx.attr.outs:
        ctx.fail(f"{PROVENANCE} is the name of the provenance env_run writes; name the output otherwise")
    return outs, ctx.declare_file(PROVENANCE)


def _image_run_impl(ctx):
    from rules.oci.image import OciImageInfo, required_dep
    from rules.oci.rootfs import declare_rootfs

    dep, image = required_dep(ctx, "image", OciImageInfo, "an oci_image target")
    srcs, data = ctx.files("srcs"), ctx.files("data")
    outs, statement = _declared_outputs(ctx)
    rootfs, facts = declare_rootfs(ctx, image)
    locks = [{"uri": lock.path, "sha256": hashlib.sha256(ctx.read_source(lock)).hexdigest()}
             for lock in image.lockfiles]
    cmd = (ctx.attr.cmd.replace("$(SRCS)", " ".join(f.path for f in srcs))
           .replace("$(DATA)", " ".join(f.path for f in data))
           .replace("$(OUTS)", " ".join(f.path for f in outs))
           .replace("$(PREFIX)", ""))
    ctx.actions.declare(
        mnemonic="EnvRun", kind="env.run_image", inputs=[rootfs, facts, *srcs, *data], outputs=[*outs, statement],
        platform=ctx.platform,
        params={"cmd": cmd, "rootfs": rootfs.path, "image_facts": facts.path, "image": str(dep.label),
                "env": dict(sorted(ctx.attr.env_vars.items())), "target": str(ctx.label), "locks": locks},
        description=f"EnvRun {ctx.label} (in {dep.label})",
    )
    return [DefaultInfo(files=(*outs, statement))]


SHELLS = (("bin/bash", []), ("usr/bin/bash", []), ("bin/sh", []), ("usr/bin/sh", []),
          ("bin/busybox", ["sh"]), ("usr/bin/busybox", ["sh"]))


def _run_in_image(execution) -> None:
    import os

    params = execution.params
    rootfs = execution.tree_path(params["rootfs"])
    facts = loads_bounded(execution.path(next(f for f in execution.action.inputs if f.path == params["image_facts"]))
                          .read_bytes(), params["image_facts"])
    shell = next(([f"/{path}", *args] for path, args in SHELLS if os.path.lexists(rootfs / path)), None)
    if shell is None:
        raise ActionFailed(f"{params['image']} has no shell (bash, sh or busybox) to run the command with")
    image_env = dict(e.split("=", 1) for e in facts["env"] if "=" in e)
    env = {"PATH": image_env.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", **params["env"]}
    code = execution.run_command([*shell, "-c", params["cmd"]], extra_env=env, root=params["rootfs"])
    if code != 0:
        raise ActionFailed(f"command exited with status {code} (in the root filesystem of {params['image']})")
    outputs = execution.action.outputs
    deps = [{"uri": params["image"], "digest": {"sha256": facts["manifest"].split(":", 1)[1]},
             "annotations": {"kind": "image"}}]
    deps += [{"uri": lock["uri"], "digest": {"sha256": lock["sha256"]}, "annotations": {"kind": "lockfile"}}
             for lock in params["locks"]]
    skip = {params["rootfs"], params["image_facts"]}
    statement = _statement(execution, outputs[:-1], deps, skip)
    execution.path(outputs[-1]).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")


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
    params = execution.params
    tree = execution.input_entries[params["tree"]].digest
    deps = [{"uri": f"hb-tree:{params['tree']}", "digest": {"blake3": tree.hash},
             "annotations": {"kind": "environment", "prefix": params["prefix"], "size": tree.size}},
            {"uri": params["lock"]["uri"], "digest": {"sha256": params["lock"]["sha256"]},
             "annotations": {"kind": "lockfile", "content_hash": params["lock"]["content_hash"],
                             "platform": params["lock"]["platform"]}}]
    statement = _statement(execution, outputs[:-1], deps, {params["tree"]})
    execution.path(outputs[-1]).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")


def _statement(execution, outs, deps: list[dict], skip: set[str]) -> dict:
    """in-toto Statement (SLSA provenance v1) of the artifacts: artifact -> environment tree (or image
    manifest) -> lock files (`deps`), then the declared inputs (all but those in `skip`)."""
    params = execution.params
    subjects = []
    for out in outs:
        path = execution.path(out)
        if not path.is_file() or path.is_symlink():
            raise ActionFailed(f"{out.path} was not written as a file by the command")
        subjects.append({"name": out.path, "digest": {"sha256": sha256_of_file(path)}})
    deps = list(deps)
    for f in execution.action.inputs:
        if f.path not in skip and not f.is_directory:
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


# read_only_trees: the environment tree, the image's root filesystem and directory data are bound
# read-only from views made once per tree (hermetic_build/treeviews.py), not copied for every run
register_action_kind("env.run", "2", _run, read_only_trees=True)  # 2: writes provenance.intoto.json
register_action_kind("env.run_image", "1", _run_in_image, read_only_trees=True)

env_run = rule(
    "env_run",
    _env_run_impl,
    attrs={
        "env": attr.label(doc="a conda_env target: its tree is mounted read-only at its prefix"),
        "image": attr.label(doc="instead of env: an oci_image target whose root filesystem (all its layers, the "
                                "base's included) is the command's `/`, read-only"),
        "srcs": attr.label_list(allow_files=True, doc="code the command runs ($(SRCS))"),
        "data": attr.label_list(allow_files=True, doc="data files or targets it reads ($(DATA))"),
        "outs": attr.string_list(mandatory=True, doc="output files ($(OUTS)), relative to hb-out/<pkg>/<name>/"),
        "cmd": attr.string(mandatory=True, doc="shell command (bash; in an image its bash, sh or busybox sh); "
                                               "$(SRCS), $(DATA), $(OUTS), $(PREFIX)"),
        "env_vars": attr.string_dict(doc="more environment variables"),
    },
    doc="Run a command inside a staged environment, or an image's root filesystem (no network, declared "
        "inputs only); its outputs are cached build outputs.",
)
