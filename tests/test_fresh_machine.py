"""Both README set-up commands on a fresh Debian 12 machine that has only python3, python3-venv and git
(issue 10): the machine is a debootstrap root built from this machine's own apt sources, entered with
unshare + pivot_root (tests/fresh_machine/enter_root.sh), holding a clean clone of the commit under test
(uncommitted changes are not tested). The commands are read from README.md, where they are marked.

The debootstrapped base is cached as a tarball in /var/cache/hb-fresh-debian/ (keyed by suite,
architecture and package list), and the fresh root's pip cache lives there too; the first run needs
neither. Phase times are printed (`pytest -s` shows them).

The scenario starts with the session, on a thread of its own beside the other tests (FreshRun): it
mostly waits on downloads, apt and pip, and took 4-5 minutes of a 25-minute suite run after them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from support import REPO, require_tool

pytestmark = pytest.mark.slow

SUITE = "bookworm"  # Debian 12
INCLUDE = ("python3", "python3-venv", "git", "ca-certificates")
CACHE = Path("/var/cache/hb-fresh-debian")
ENTER = Path(__file__).resolve().parent / "fresh_machine" / "enter_root.sh"
CLONE = "/root/hermetic-build"  # where the clone lies inside the root
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)
ERROR_LINE = re.compile(r"^[a-z ]*(error|failed): ")


# ----- README ----------------------------------------------------------------------------------------


def readme_command(marker: str) -> str:
    """The command after `<!-- MARKER` in README.md: the next indented line, or a fenced block's first line."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"<!-- {marker}")), None)
    assert start is not None, f"README.md has no '<!-- {marker}' marker before its set-up command"
    rest = [line for line in lines[start + 1:] if line.strip()]
    if rest[0].startswith("```"):
        return rest[1].strip()
    assert rest[0].startswith("    "), f"README.md: the line after '<!-- {marker}' is not an indented command"
    return rest[0].strip()


# ----- this machine's apt sources ------------------------------------------------------------------


def apt_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of each `deb` source of this machine, deb822 files and one-line lists alike."""
    sources = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                sources.extend((uri, fields.get("suites", [])) for uri in fields.get("uris", []))
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in lists:
        for line in path.read_text().splitlines() if path.is_file() else []:
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                sources.append((words[1], [words[2]]))
    return sources


def debian_mirrors() -> tuple[str, str | None]:
    """The main archive (a source of a release suite, not -updates/-security) and the security archive."""
    sources = apt_sources()
    main = next((uri for uri, suites in sources if any("-" not in s and "/" not in s for s in suites)), None)
    if main is None:
        pytest.fail("no Debian archive in /etc/apt/sources.list(.d): debootstrap needs one")
    security = next((uri for uri, suites in sources if any(s.endswith("-security") for s in suites)), None)
    return main, security


# ----- the fresh root --------------------------------------------------------------------------------


def in_namespaces(cmd: list[str]) -> list[str]:
    """Private mount and PID namespaces: whatever the command mounts or starts ends with it, even on a kill."""
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", *cmd]


def base_root(root: Path, mirror: str, timings: dict) -> None:
    """A minbase Debian root with INCLUDE, from the cached tarball or debootstrapped (and then cached)."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(" ".join(INCLUDE).encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{arch}-minbase-{key}.tar"
    root.mkdir()
    started = time.monotonic()
    if tarball.is_file():
        subprocess.run(["tar", "-xf", str(tarball), "--numeric-owner", "-C", str(root)], check=True)
        timings["base root from cache"] = time.monotonic() - started
        return
    require_tool("debootstrap")
    proc = subprocess.run(in_namespaces(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
                                         SUITE, str(root), mirror]),
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"debootstrap failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    timings["debootstrap"] = time.monotonic() - started
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial")
    subprocess.run(["tar", "-cf", str(partial), "--numeric-owner", "-C", str(root), "."], check=True)
    partial.replace(tarball)


def configure_like_this_network(root: Path, mirror: str, security: str | None) -> None:
    """What a Debian 12 installed on this network has: the standard sources (from this machine's
    mirrors), and the local certificate authorities this machine trusts (an intercepting proxy's)."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    keyring = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    stanzas = [f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n{keyring}"]
    if security:
        stanzas.append(f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n{keyring}")
    (root / "etc/apt/sources.list.d/debian.sources").write_text("\n".join(stanzas))
    # apt's maintainer scripts must not start services (nginx, dockerd) on this machine's network
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    stock = set(PEM.findall((root / "etc/ssl/certs/ca-certificates.crt").read_text()))
    local = [pem for pem in PEM.findall(host_bundle.read_text() if host_bundle.is_file() else "") if pem not in stock]
    for i, pem in enumerate(local):
        (root / f"usr/local/share/ca-certificates/this-network-{i}.crt").write_text(pem + "\n")


def clone_into(root: Path, scratch: Path) -> Path:
    """A clean clone of the committed HEAD under test, copied into the root."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(scratch)], check=True)
    dest = root / CLONE.lstrip("/")
    shutil.copytree(scratch, dest, symlinks=True)
    return dest


def enter(root: Path, script: str, timeout: float, run: "FreshRun") -> subprocess.CompletedProcess:
    """SCRIPT in the root (enter_root.sh); the process is the run's until it ends, so that a session that
    stops early kills it (unshare --kill-child takes the whole root's processes with it)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HB_FRESH_PIP_CACHE": str(CACHE / "pip")}
    (CACHE / "pip").mkdir(parents=True, exist_ok=True)
    with subprocess.Popen([str(ENTER), str(root), script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        run.running = proc
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{script[:200]!r} ran past {timeout:.0f} s:\n{stdout[-3000:]}\n{stderr[-3000:]}") from None
        finally:
            run.running = None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def timed(command: str) -> str:
    """The command as a script that prints a time mark after each `&&` part (same semantics)."""
    marks = ['echo "@@mark start $(date +%s.%N)"']
    for i, part in enumerate(command.split(" && ")):
        marks += [part, f'echo "@@mark {i} $(date +%s.%N)"']
    return " && ".join(marks)


def record_marks(command: str, stdout: str, ended: float, timings: dict, run: str) -> None:
    """The time of each part of the command, from its marks; the part that failed ends at `ended`."""
    marks = dict(re.findall(r"^@@mark (\S+) (\S+)$", stdout, re.MULTILINE))
    previous = float(marks["start"])
    for i, part in enumerate(command.split(" && ")):
        name = f"{run}: {part.split(' -C ')[-1][:60]}"
        if str(i) not in marks:
            timings[f"{name} (failed)"] = ended - previous
            break
        timings[name] = float(marks[str(i)]) - previous
        previous = float(marks[str(i)])


def error_block(stderr: str) -> list[str]:
    lines = stderr.rstrip().splitlines()
    first = next((i for i, line in enumerate(lines) if ERROR_LINE.match(line)), None)
    return lines[first:] if first is not None else []


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


# ----- the scenario, on a thread of its own ------------------------------------------------------------
class FreshRun:
    """The whole scenario on a thread: it mostly waits (apt and pip downloads, dpkg, a first build), so
    it starts when the test session starts (conftest.py's pytest_collection_finish calls
    start_in_background) and runs beside the other tests; the test waits for it at its turn and
    reports its phase times and its failure, if any."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.error: BaseException | None = None
        self.report: list[str] = []
        self.running: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, name="hb-fresh-debian", daemon=True)

    def _run(self) -> None:
        try:
            scenario(self)
        except BaseException as exc:  # noqa: BLE001 - raised again by the test
            self.error = exc

    def wait(self) -> None:
        self.thread.join()
        print("\n".join(self.report))
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """The session ends before the test waited (interrupted, -x): end the root's processes."""
        proc = self.running
        if proc is not None and proc.poll() is None:
            proc.kill()


_run: FreshRun | None = None


def start_in_background(session) -> None:
    """Start the scenario now, once (conftest.py calls this when the test is among those selected)."""
    global _run
    if _run is None and os.geteuid() == 0 and not session.config.option.collectonly:
        _run = FreshRun(Path(tempfile.mkdtemp(prefix="hb-fresh-debian-")))
        _run.thread.start()


def stop_background() -> None:
    if _run is not None:
        _run.stop()


def scenario(run: FreshRun) -> None:
    require_tool("unshare")
    main_command = readme_command("main-command")
    test_command = readme_command("test-command")
    mirror, security = debian_mirrors()
    timings: dict[str, float] = {}
    root = run.workdir / "root"
    total = time.monotonic()
    try:
        base_root(root, mirror, timings)
        configure_like_this_network(root, mirror, security)
        clone = clone_into(root, run.workdir / "clone")
        trust = enter(root, "update-ca-certificates >/dev/null 2>&1", 120, run)
        assert trust.returncode == 0, trust.stderr

        # 1. Only python3, python3-venv and git: no C compiler, no bubblewrap.
        assert not (root / "usr/bin/cc").exists() and not (root / "usr/bin/bwrap").exists()
        bare = enter(root, f"cd {CLONE} && {timed(main_command)}", 900, run)
        record_marks(main_command, bare.stdout, time.time(), timings, "bare")
        output = bare.stdout + bare.stderr
        assert bare.returncode != 0, "the main command succeeded without a C compiler:\n" + output[-3000:]
        assert "Traceback" not in output and "externally-managed-environment" not in output, output[-3000:]
        error = error_block(bare.stderr)
        assert len(error) == 1, "hb's error is not one line:\n" + bare.stderr[-3000:]
        assert "apt-get install" in error[0] and ("C compiler" in error[0] or "bubblewrap" in error[0]), error[0]
        assert "bubblewrap" in output, "hb did not say that bubblewrap is missing:\n" + bare.stderr[-3000:]
        run.report.append(f"without gcc and bwrap, the main command says:\n{bare.stderr.strip()}")

        # 2. What hb asked for, then the main command again: it builds the image.
        started = time.monotonic()
        apt = enter(root, "apt-get update -qq && apt-get install -y -qq gcc libc6-dev bubblewrap >/dev/null", 600, run)
        assert apt.returncode == 0, apt.stdout[-3000:] + apt.stderr[-3000:]
        timings["apt-get install gcc libc6-dev bubblewrap"] = time.monotonic() - started
        full = enter(root, f"cd {CLONE} && {timed(main_command)}", 900, run)
        record_marks(main_command, full.stdout, time.time(), timings, "full")
        assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
        assert "NOT ISOLATED" not in full.stderr, "bwrap cannot create namespaces in the root:\n" + full.stderr
        layout = clone / "examples/hb-out/env/nlp-gpu"
        index = json.loads((layout / "index.json").read_text())
        assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
        manifest = index["manifests"][0]["digest"].split(":", 1)[1]
        assert (layout / "blobs/sha256" / manifest).is_file()

        # 3. The test command, as on a machine where it runs first: it creates .venv and installs the
        #    apt tools itself (collection only: the suite itself is too long to run here).
        started = time.monotonic()
        ci = enter(root, f"cd {CLONE} && rm -rf .venv && {test_command} --collect-only -q tests/test_label.py"
                         " && .venv/bin/python -c 'import pytest' && dpkg -s debootstrap skopeo >/dev/null", 900, run)
        timings[f"{test_command} --collect-only (apt tools, .venv)"] = time.monotonic() - started
        assert ci.returncode == 0, ci.stdout[-3000:] + ci.stderr[-3000:]
        assert re.search(r"^tests/test_label\.py(: \d+|::)", ci.stdout, re.MULTILINE), ci.stdout[-3000:]
    finally:
        timings["total"] = time.monotonic() - total
        run.report.append("fresh Debian 12, phase times (beside the other tests):")
        run.report.extend(f"  {seconds:7.1f}s  {phase}" for phase, seconds in timings.items())
        left = mounts_under(run.workdir)
        if not left:  # never a tree with the host's /dev or /proc mounted in it
            shutil.rmtree(run.workdir, ignore_errors=True)
    assert left == [], f"mounts left behind: {left}"


# ----- the test ----------------------------------------------------------------------------------------


def test_readme_set_up_commands_on_a_fresh_debian_12():
    if os.geteuid() != 0:
        pytest.skip("building and entering a Debian root needs root (CI runs .ci/run as root)")
    assert _run is not None, "the scenario was not started (conftest.py's pytest_collection_finish)"
    _run.wait()
