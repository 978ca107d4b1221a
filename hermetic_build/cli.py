"""The `hb` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .errors import HbError, UsageError, no_space
from .redact import for_terminal
from .report import Reporter


def echo(message="", **kwargs) -> None:
    """Everything hb prints goes through here (and Reporter): names, paths, versions and messages come
    from lock files, packages, servers and BUILD files, so credentials are masked and control
    characters escaped (redact.for_terminal). JSON output has no raw control character to escape."""
    click.echo(for_terminal(str(message)), **kwargs)


def _session(ctx_obj, jobs: int = 0, keep_sandbox: bool = False, quiet: bool = False, remote=None):
    from .build import Session
    from .workspace import find_workspace

    workspace = find_workspace(Path(ctx_obj.get("workspace") or Path.cwd()))
    return Session(workspace, jobs=jobs, reporter=Reporter(quiet=quiet), keep_sandbox=keep_sandbox, remote=remote)


def remote_options(fn):
    """--remote-cache and friends, for commands that may read or write a remote cache."""
    options = [
        click.option("--remote-cache", metavar="URL", help="http(s)://host/prefix or oci://host/repo "
                     "(default: remote_cache in hermetic.toml)."),
        click.option("--remote-upload/--no-remote-upload", default=None,
                     help="Write results to the remote (typical on CI); default: remote_upload in hermetic.toml."),
        click.option("--remote-required", is_flag=True, help="Fail instead of building locally when the remote fails."),
        click.option("--remote-timeout", type=int, default=None, metavar="SECONDS", help="Per-request timeout."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _remote(remote_cache, remote_upload, remote_required, remote_timeout):
    from .build import RemoteOptions

    return RemoteOptions(remote_cache, remote_upload, remote_required, remote_timeout)


def _current_package(session) -> str:
    from .workspace import package_of_cwd

    return package_of_cwd(session.workspace)


class HbGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HbError as exc:
            echo(exc.render(), err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            exc.exit_code = UsageError.exit_code
            raise
        except KeyboardInterrupt:  # Ctrl-C: a message, not a Python traceback
            echo("interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            if not no_space(exc):
                raise
            echo(HbError(f"no space left on the device{f' ({exc.filename})' if exc.filename else ''}: {exc.strerror}",
                         hint="free space where the cache (HB_CACHE_DIR) or hb-out/ lives, e.g. hb cache gc "
                              "--max-size ..., and run hb again: nothing half-written is kept").render(), err=True)
            ctx.exit(HbError.exit_code)


@click.group(cls=HbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workspace", "-C", type=click.Path(file_okay=False), help="Run as if started in this directory.")
@click.version_option(package_name="hermetic-build", prog_name="hb")
@click.pass_context
def main(ctx, workspace):
    """hermetic-build: ML environments as reproducible, cached build targets."""
    ctx.obj = {"workspace": workspace}


@main.command()
@click.argument("labels", nargs=-1, required=True)
@click.option("--jobs", "-j", type=int, default=0, help="Actions run in parallel (default: cores).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--keep-sandbox", is_flag=True, help="Keep the sandbox of a failed action for inspection.")
@click.option("--quiet", "-q", is_flag=True)
@remote_options
@click.option("--remote-executor", metavar="URL", help="grpc(s)://host:port[/instance]: run actions on a REAPI "
              "engine's workers (default: remote_executor in hermetic.toml); fetches stay local.")
@click.option("--remote-download", type=click.Choice(["minimal", "all"]), default=None,
              help="With --remote-executor: 'minimal' (default) downloads only the outputs needed here "
                   "(hb-out, local-only actions, hb verify); 'all' downloads every output.")
@click.pass_obj
def build(obj, labels, jobs, as_json, keep_sandbox, quiet, remote_cache, remote_upload, remote_required,
          remote_timeout, remote_executor, remote_download):
    """Build LABELS (//pkg:name, :name, //pkg/..., //pkg:all)."""
    from .build import RemoteOptions

    session = _session(obj, jobs, keep_sandbox, quiet,
                       RemoteOptions(remote_cache, remote_upload, remote_required, remote_timeout, remote_executor,
                                     remote_download))
    summary = session.build(list(labels), _current_package(session))
    if as_json:
        echo(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    elif not quiet:
        for label, outputs in summary.targets.items():
            echo(f"{label}")
            for out in outputs:
                echo(f"  {out['path']}")
        echo(f"{summary.executed} actions executed, {summary.cached} cached, {summary.seconds:.2f}s", err=True)


@main.command()
@click.argument("labels", nargs=-1, required=True)
@click.option("--update", multiple=True, metavar="NAME",
              help="Re-solve letting NAME move, keeping every other package at its locked version where possible.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a lock no longer matches its inputs.")
@click.option("--keep-sandbox", is_flag=True, help="Keep the sandbox of a failed action (e.g. a channel build).")
@click.pass_obj
def lock(obj, labels, update, check, keep_sandbox):
    """Resolve lockable targets (e.g. conda_lock) and write their lock files into the source tree."""
    from .lock import run_lock

    session = _session(obj, keep_sandbox=keep_sandbox)
    outcomes = run_lock(session, list(labels), _current_package(session), update=update, check=check)
    stale = False
    for label, outcome in outcomes:
        if check:
            if outcome.stale:
                stale = True
                echo(f"{label}: lock is stale")
                for reason in outcome.stale:
                    echo(f"  - {reason}")
            else:
                echo(f"{label}: lock is up to date")
        else:
            for path in outcome.written:
                echo(f"{label}: wrote {path}")
    if stale:
        echo("run `hb lock` on these targets to update their locks", err=True)
        sys.exit(1)


@main.command()
@click.argument("label")
@click.argument("reference")
@click.option("--ca", "cafile", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate(s) to trust for a registry with a private CA (default: $HB_REGISTRY_CA).")
@click.option("--plain-http", is_flag=True, help="Talk plain HTTP (default only for 127.0.0.1/localhost).")
@click.option("--chunk-size", type=int, default=0, metavar="BYTES",
              help="Upload blobs in chunks of this size (PATCH); default: one monolithic PUT.")
@click.option("--mount-from", multiple=True, metavar="REPOSITORY",
              help="Try a cross-repository mount from this repository of the same registry first.")
@click.option("--sign", is_flag=True, help="Sign the bundle's provenance statement (DSSE, ed25519) with the key "
              "of --sign-key or $HB_SIGNING_KEY and push the envelope as an artifact about the image.")
@click.option("--sign-key", metavar="FILE", help="ed25519 private key to sign with (implies --sign).")
@click.pass_obj
def push(obj, label, reference, cafile, plain_http, chunk_size, mount_from, sign, sign_key):
    """Build LABEL (an image or an oci_bundle) and push it to REFERENCE (host[:port]/repository[:tag])."""
    from .publish import run_publish

    options = {"cafile": cafile, "plain_http": plain_http, "chunk_size": chunk_size, "mount_from": list(mount_from)}
    if sign or sign_key:
        from .attest import load_private_key, sign as dsse_sign

        key = load_private_key(sign_key)  # before building: a missing key fails fast; it stays in this process
        options["signer"] = lambda payload: dsse_sign(payload, key)
    session = _session(obj)
    echo(run_publish(session, "push", label, _current_package(session), reference, options))


@main.command()
@click.argument("label")
@click.option("--docker-host", metavar="URL", help="Daemon to load into (default: $DOCKER_HOST or the local socket).")
@click.pass_obj
def load(obj, label, docker_host):
    """Build LABEL (an image) and load it into a Docker-API daemon (dockerd or podman system service)."""
    from .publish import run_publish

    session = _session(obj)
    echo(run_publish(session, "load", label, _current_package(session), "", {"docker_host": docker_host}))


@main.command()
@click.argument("expression")
@click.option("--output", type=click.Choice(["label", "label_kind", "location"]), default="label")
@click.pass_obj
def query(obj, expression, output):
    """Query the target graph: deps(L), rdeps(U, L), kind(rule, U), or a pattern."""
    from .query import run_query

    session = _session(obj)
    result = run_query(session, expression, _current_package(session))
    for target in result:
        if output == "label_kind":
            echo(f"{target.rule} rule {target.label}")
        elif output == "location":
            echo(f"{target.location}: {target.rule} {target.label}")
        else:
            echo(str(target.label))


@main.command()
@click.argument("labels", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def aquery(obj, labels, as_json):
    """List the actions needed to build LABELS, with keys and inputs, without running them."""
    from .explain import plan

    session = _session(obj)
    steps = plan(session, list(labels), _current_package(session))
    if as_json:
        echo(json.dumps([s.to_json() for s in steps], indent=2, sort_keys=True))
        return
    lines = []  # written at once: one click.echo per line cost more than the analysis of 10,000 targets
    for step in steps:
        a = step.action
        lines.append(f"action {a.mnemonic} {a.owner}")
        lines.append(f"  kind:     {a.kind}@{a.version}  platform: {a.platform}")
        lines.append(f"  key:      {step.key or '(pending: depends on outputs of actions not built yet)'}")
        lines.append(f"  status:   {step.status}")
        lines.extend(f"  input:    {path} {digest or '(not built yet)'}" for path, digest in step.inputs.items())
        lines.extend(f"  output:   {out.path}{'/' if out.is_directory else ''}" for out in a.outputs)
        for name, value in sorted(a.params.items()):
            text = json.dumps(value)
            lines.append(f"  param:    {name} = {text if len(text) < 200 else text[:197] + '...'}")
    if lines:
        echo("\n".join(lines))


@main.command()
@click.argument("labels", nargs=-1, required=True)
@remote_options
@click.pass_obj
def explain(obj, labels, remote_cache, remote_upload, remote_required, remote_timeout):
    """For each action that would run, say which input or parameter changed since the last build
    (consulting the same caches a build with the same options would)."""
    from .explain import plan

    session = _session(obj, remote=_remote(remote_cache, remote_upload, remote_required, remote_timeout))
    steps = plan(session, list(labels), _current_package(session))
    pending = [s for s in steps if s.status != "cached"]
    if not pending:
        echo("everything is up to date: no action would run")
        return
    for step in pending:
        echo(f"{step.action.description} would run:")
        for reason in step.reasons:
            echo(f"  - {reason}")


@main.command()
@click.option("--revoke", is_flag=True, help="Forget what was trusted for this workspace.")
@click.pass_obj
def trust(obj, revoke):
    """Trust this workspace's hermetic.toml settings that reach outside it (cache_dir, remote_cache,
    remote_executor, env_allowlist, rule_modules, raised BUILD file limits). Shows them first; they
    are recorded for this checkout and these values, and asked again when they change."""
    from . import trust as trusting
    from .workspace import find_workspace

    workspace = find_workspace(Path(obj.get("workspace") or Path.cwd()))
    if revoke:
        path = trusting.revoke(workspace.root)
        echo(f"{workspace.root}: nothing trusted any more (in {path})")
        return
    settings = workspace.settings.privileged
    if not settings:
        echo(f"{workspace.root}: hermetic.toml sets nothing that needs trust")
        return
    for s in settings:
        echo(f"{s.location}: {s.shown()}\n    {trusting.WHY[s.key]}")
    path = trusting.record(workspace.root, settings)
    echo(f"trusted for {workspace.root} (recorded in {path}; asked again when they change)")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path):
    """Make an ed25519 signing key: PATH (private, mode 0600) and PATH.pub."""
    from .attest import keygen as make_key

    private, public = make_key(Path(path))
    echo(f"wrote {private} (keep it secret) and {public}")


@main.group()
def attest():
    """Sign and verify in-toto statements (DSSE envelopes, ed25519)."""


@attest.command("sign")
@click.argument("label")
@click.option("--key", "key_path", metavar="FILE", help="ed25519 private key (default: $HB_SIGNING_KEY).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Envelope to write (default: hb-out/<pkg>/<name>.dsse.json).")
@click.option("--attach", "layout", type=click.Path(file_okay=False, exists=True), metavar="LAYOUT",
              help="Also add the envelope to this OCI image layout (one you own, e.g. a copy of an oci_bundle's) "
                   "as an artifact about the image (artifactType application/vnd.dsse.envelope.v1+json).")
@click.pass_obj
def attest_sign(obj, label, key_path, output, layout):
    """Build LABEL (e.g. an oci_provenance target) and sign the in-toto statement it produces."""
    from .attest import load_private_key, sign

    key = load_private_key(key_path)  # before building: a missing key fails fast
    session = _session(obj)
    summary = session.build([label], _current_package(session))
    (name, outputs), = summary.targets.items()
    statements = []
    for out in outputs:
        path = session.workspace.root / out["path"]
        statements += sorted(path.rglob("*.intoto.json")) if path.is_dir() else (
            [path] if path.name.endswith(".intoto.json") else [])
    if len(statements) != 1:
        raise UsageError(f"{name} produces {len(statements)} in-toto statements (*.intoto.json); hb attest sign "
                         "signs exactly one", hint="name an oci_provenance target")
    payload = statements[0].read_bytes()
    envelope = sign(payload, key)
    from .action import output_dir
    from .attest import check_statement, envelope_bytes
    from .label import Label

    if output:  # the user's own path
        dest = Path(output)
        dest.write_bytes(envelope_bytes(envelope))
    else:
        from .build import publish_file

        # beside the output in hb-out/, which a checkout can ship: a link already there (to ~/.bashrc)
        # is replaced, never written through
        dest = session.workspace.root / (output_dir(Label.parse(name)) + ".dsse.json")
        publish_file(session.workspace.output_root, dest, envelope_bytes(envelope))
    echo(f"signed {statements[0].relative_to(session.workspace.root)}: wrote {dest}")
    if layout:
        from .referrers import DSSE_TYPE, ENVELOPE_NAME, attach_to_layout

        _refuse_cache_path(session, Path(layout))
        about = check_statement(payload)["subject"]
        if len(about) != 1:
            raise UsageError(f"the statement is about {len(about)} subjects; --attach needs one image")
        digest = "sha256:" + about[0]["digest"]["sha256"]
        attach_to_layout(Path(layout), digest, DSSE_TYPE, ENVELOPE_NAME, envelope_bytes(envelope), ENVELOPE_NAME)
        echo(f"attached the envelope to {digest} in {layout}")


def _refuse_cache_path(session, path: Path) -> None:
    """hb never writes an attestation into its cache (its entries are content-addressed and shared)."""
    real, root = path.resolve(), Path(session.local_store.root).resolve()
    if real == root or root in real.parents:
        raise UsageError(f"{path} is inside hb's cache ({root}); attach to a layout you own",
                         hint="copy the image layout out first, e.g. cp -r hb-out/env/nlp-gpu-bundle my-image")


@attest.command("verify")
@click.argument("target", metavar="ENVELOPE|LAYOUT|REFERENCE")
@click.option("--key", "key_path", required=True, metavar="PUB", help="ed25519 public key (PEM).")
@click.option("--image", type=click.Path(file_okay=False, exists=True),
              help="With an envelope file: the OCI image layout whose manifest digest the statement must be about.")
@click.option("--subject", metavar="sha256:HEX", help="The digest the statement must be about.")
@click.option("--lock", "locks", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A lock file whose every package must be among the statement's dependencies (repeatable).")
@click.option("--ca", "cafile", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate(s) of a registry with a private CA (default: $HB_REGISTRY_CA).")
@click.option("--plain-http", is_flag=True, help="Talk plain HTTP to the registry (default only for localhost).")
def attest_verify(target, key_path, image, subject, locks, cafile, plain_http):
    """Check a signed statement: its signature, its subject and (with --lock) that every locked package is
    in it. TARGET is an envelope file, an OCI image layout with the envelope attached, or a registry image
    (host/repository:tag or @sha256:...) with the envelope pushed as an artifact about it."""
    from .attest import AttestationError, check_statement, layout_manifest_digest, load_public_key, lock_sha256s
    from .attest import verify as check
    from .referrers import parse_json

    public = load_public_key(Path(key_path))
    pinned = [lock_sha256s(Path(lock)) for lock in locks]
    path = Path(target)
    if path.is_file():
        found, where = [path.read_bytes()], target
        if image:
            subject = layout_manifest_digest(Path(image), "latest" if subject is None else None)
    else:
        if path.is_dir():
            found, digest = _layout_envelopes(path)
        else:
            found, digest = _registry_envelopes(target, cafile, plain_http)
        if subject is not None and subject != digest:
            raise AttestationError(f"{target} is {digest}, not {subject}")
        subject, where = digest, f"{target} ({digest})"
    # one envelope at a time (a registry's are read as they are checked): memory is one envelope's
    errors, count = [], 0
    for data in found:
        count += 1
        try:
            envelope = parse_json(data, f"the envelope {count} of {where}")
            statement = check_statement(check(envelope, public), subject=subject, lock_sha256s=pinned)
        except (AttestationError, UsageError) as exc:
            if path.is_file():
                raise
            message = exc.message if hasattr(exc, "message") else str(exc)
            if message not in errors:
                errors.append(message)
            continue
        about = ", ".join(f"{s['name']}@sha256:{s['digest']['sha256']}" for s in statement["subject"])
        echo(f"verified: signature OK; about {about}"
                   + (f"; every package of {', '.join(locks)} is in it" if locks else ""))
        return
    if not count:
        raise AttestationError(f"{where} has no signed provenance (DSSE envelope) attached",
                               hint="hb push --sign, or hb attest sign LABEL --attach LAYOUT")
    if count == 1:
        raise AttestationError(errors[0])
    raise AttestationError(f"none of the {count} envelopes of {where} checks out: " + "; ".join(errors))


def _layout_envelopes(layout: Path) -> tuple[Iterator[bytes], str]:
    from .referrers import DSSE_TYPE, layout_artifacts, read_index

    images = [m for m in read_index(layout)["manifests"] if isinstance(m, dict) and not m.get("artifactType")]
    named = [m for m in images if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"]
    chosen = images if len(images) == 1 else named
    if len(chosen) != 1:
        raise UsageError(f"{layout}/index.json names {len(images)} images; pass the envelope file and --subject")
    digest = chosen[0]["digest"]
    return layout_artifacts(layout, digest, DSSE_TYPE), digest


def _registry_envelopes(reference: str, cafile, plain_http) -> tuple[Iterator[bytes], str]:
    import hashlib

    from .referrers import DSSE_TYPE, registry_artifacts
    from .registry import RegistryClient, RegistryError, RegistryRef

    cafile = cafile or os.environ.get("HB_REGISTRY_CA")
    try:
        ref = RegistryRef.parse(reference, default_secure=False if plain_http else (True if cafile else None))
    except ValueError as exc:
        raise UsageError(f"{reference} is neither a file, a directory nor a registry reference: {exc}") from None
    client = RegistryClient(ref.host, secure=ref.secure, cafile=cafile)
    try:
        got = client.get_manifest(ref.repository, ref.reference or "latest")
        if got is None:
            raise UsageError(f"{reference}: no such image in {ref.host}/{ref.repository}")
        digest = "sha256:" + hashlib.sha256(got[0]).hexdigest()
    except RegistryError as exc:
        raise UsageError(f"{reference}: {exc}") from None

    def envelopes() -> Iterator[bytes]:
        try:
            yield from registry_artifacts(client, ref.repository, digest, DSSE_TYPE)
        except RegistryError as exc:
            raise UsageError(f"{reference}: {exc}") from None

    return envelopes(), digest


@main.command()
@click.argument("labels", nargs=-1, required=True)
@click.option("--jobs", "-j", type=int, default=0, help="Actions run in parallel (default: cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout (for CI).")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_obj
def verify(obj, labels, jobs, as_json, quiet):
    """Rebuild everything LABELS need from nothing (fresh temporary cache, no remote, another
    directory) and compare every output with the last build's: R = identical actions / total.
    Exit 0 only when R = 1 (exit 1 otherwise)."""
    from .verify import verify as run_verify

    session = _session(obj, jobs, quiet=quiet or as_json)
    result = run_verify(session, list(labels), _current_package(session))
    if as_json:
        echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        for target in result.targets:
            state = "identical" if target.identical else "DIFFERENT"
            line = f"{target.label}: {state}"
            for recorded, rebuilt in target.manifests:
                line += (f"; manifest {recorded} {'matched' if recorded == rebuilt else f'became {rebuilt}'}")
            echo(line)
        for action in result.actions:
            if not action.identical:
                echo(f"differs: {action.description}")
        echo(f"R = {result.identical}/{len(result.actions)} = {result.ratio:.3f} identical actions "
                   f"({result.seconds:.1f}s)")
        if result.first_difference:
            echo(f"first difference: {result.first_difference}")
    if result.ratio < 1:
        sys.exit(1)


@main.command()
@click.argument("labels", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["dot", "png"]), default="dot")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (png needs one).")
@click.pass_obj
def graph(obj, labels, fmt, output):
    """Draw the target graph of LABELS and their dependencies."""
    from .query import to_dot

    session = _session(obj)
    analysis = session.analyze(list(labels), _current_package(session))
    dot = to_dot(analysis, analysis.closure(analysis.requested))
    if fmt == "dot":
        if output:
            Path(output).write_text(dot)
        else:
            echo(dot, nl=False)
        return
    import shutil
    import subprocess

    if not shutil.which("dot"):
        raise UsageError("--format png needs graphviz's `dot`", hint="install graphviz, or use --format dot")
    if not output:
        raise UsageError("--format png needs --output FILE")
    subprocess.run(["dot", "-Tpng", "-o", output], input=dot.encode(), check=True)
    echo(output)


@main.command()
@click.option("--expunge", is_flag=True, help="Also delete the whole local cache (shared by workspaces).")
@click.pass_obj
def clean(obj, expunge):
    """Delete hb-out/ and this workspace's analysis state (and with --expunge, the cache)."""
    import shutil

    from .build import refuse_linked_output_root

    session = _session(obj)
    refuse_linked_output_root(session.workspace.output_root)  # never delete through a link
    with session.publishing():  # not while a build publishes into it (it waits, then makes hb-out/ again)
        shutil.rmtree(session.workspace.output_root, ignore_errors=True)
    shutil.rmtree(session.state_dir, ignore_errors=True)
    left = session.local_store.expunge() if expunge else []
    echo(f"removed {session.workspace.output_root}" + (f" and {session.local_store.root}" if expunge else ""))
    if left:
        shown = ", ".join(left[:10]) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
        echo(f"left {len(left)} entries in {session.local_store.root} that hb did not make: {shown}", err=True)


@main.group()
def cache():
    """Inspect and trim the local cache."""


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def cache_stats(obj, as_json):
    """Size of the cache and the hits and misses of the last build."""
    session = _session(obj)
    data = {"local": session.store.stats(), "last_build": session.last_build()}
    if as_json:
        echo(json.dumps(data, indent=2, sort_keys=True))
        return
    local = data["local"]
    echo(f"cache: {local['root']}")
    echo(f"  blobs: {local['blobs']}  action-cache entries: {local['action_cache_entries']}  "
               f"size: {_human(local['bytes'])}")
    last = data["last_build"]
    if last:
        echo(f"last build: {last['executed']} executed, {last['cached']} cached")
        if last.get("rejected_entries") or last.get("corrupt_blobs"):
            echo(f"  removed: {last.get('rejected_entries', 0)} malformed action-cache entries, "
                       f"{last.get('corrupt_blobs', 0)} corrupt blobs")
        remote = last.get("remote")
        if remote:
            echo(f"  local hits: {last['local_hits']}  remote hits: {last.get('remote_hits_used', remote['ac_hits'])}  "
                       f"remote misses: {remote['ac_misses']}  ({remote['url']}"
                       f"{', disabled after an error' if remote['disabled'] else ''})")
            echo(f"  down: {remote['blobs_down']} blobs, {_human(remote['bytes_down'])}  "
                       f"up: {remote['blobs_up']} blobs, {_human(remote['bytes_up'])}  "
                       f"rejected: {remote['rejected_entries']} entries, {remote['rejected_blobs']} blobs")


@cache.command("gc")
@click.option("--max-size", required=True, help="Target size, e.g. 500M, 10G.")
@click.pass_obj
def cache_gc(obj, max_size):
    """Delete least-recently-used entries until the cache is at most --max-size."""
    session = _session(obj)
    result = session.local_store.gc(_parse_size(max_size))
    echo(f"removed {result['removed']} entries ({_human(result['freed_bytes'])}); "
               f"{_human(result['remaining_bytes'])} remain")


def _parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B") if text.strip().upper() != "B" else "0"
    number = t.rstrip("KMGT")
    unit = t[len(number):]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise UsageError(f"invalid size {text!r}", hint="use a number with an optional unit: 500M, 10G") from None


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"




@main.command()
@click.option("--bots", "url", required=True, metavar="URL",
              help="grpc(s)://host:port of an engine's Remote Workers API (Bots service), e.g. BuildGrid.")
@click.option("--instance", default="", help="The engine's instance name (the Bots session parent).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where input roots are laid out (default: a new temporary directory).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="The worker's blob cache, kept between actions (default: under --workdir).")
@click.option("--id", "bot_id", default=None, help="The bot id (default: hb-<host>-<pid>).")
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
              help="A platform property this worker offers besides OSFamily=linux (e.g. hb-kind=conda.stage).")
@click.option("--max-actions", type=int, default=None, help="Exit after running this many actions.")
@click.option("--preload/--no-preload", default=True,
              help="Run each action in a process forked from a fork server that imported hb and the rule modules "
                   "once (default), or in a fresh `python3 -P -m hermetic_build.worker_exec`.")
def worker(url, instance, workdir, cache_dir, bot_id, properties, max_actions, preload):
    """Lease hb actions from a REAPI engine's Bots service and run them (with bubblewrap, as hb does)."""
    try:
        from .rexec.worker import WorkerRefused, main as worker_main
    except ImportError as exc:
        raise UsageError(f"hb worker needs the reapi extra: {exc}",
                         hint="pip install 'hermetic-build[reapi]' (buildgrid, grpcio)") from None
    try:
        sys.exit(worker_main(url, instance, workdir, cache_dir, bot_id, properties, max_actions, preload))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except WorkerRefused as exc:  # as root, where worker_exec cannot run as another user (rexec/confine.py)
        raise HbError(str(exc)) from None


def drop_working_directory_from_path() -> None:
    """`python -m hermetic_build` (and `-m hermetic_build.cli`) put the working directory first on
    sys.path, so importing the rule modules (`rules`, or what hermetic.toml names) would run Python
    code that the checkout being built ships, in hb's own process. That implicit first entry goes,
    unless it is hb's own code root; what PYTHONPATH names stays (a deliberate choice of the user)."""
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cwd = os.getcwd()
    if cwd != code_root and sys.path and (sys.path[0] in ("", ".") or os.path.abspath(sys.path[0]) == cwd):
        del sys.path[0]


def run(args=None) -> None:
    """The `hb` command: `main`, then the end of the process without an interpreter finalization
    (process_exit.py)."""
    from .process_exit import exit_process

    drop_working_directory_from_path()
    try:
        main(args=args, prog_name="hb")
        code = 0
    except SystemExit as exc:  # click ends every command with it
        code = exc.code
    exit_process(code)


if __name__ == "__main__":  # pragma: no cover
    run()
