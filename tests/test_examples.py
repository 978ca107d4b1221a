"""The bundled example workspace, driven the way the README tells a newcomer to."""

import hashlib
import json
import os
import re

import pytest
from support import Workspace, copy_example


@pytest.fixture
def example(tmp_path) -> Workspace:
    return copy_example(tmp_path / "examples", tmp_path / "cache")


def test_data_pipeline(example):
    summary = example.build_json("//data:stats")
    assert summary["actions"]["executed"] == 6
    assert (example.root / "hb-out/data/stats/stats.txt").read_text().startswith("rows 400\n")


def test_committed_locks_are_fresh(tmp_path):
    """CI fails on a stale committed lock: `hb lock --check //...` on the repository's own examples."""
    from support import REPO

    proc = Workspace(REPO / "examples", tmp_path / "cache").hb("lock", "--check", "//...")
    assert proc.stdout.count("lock is up to date") == 3, proc.stdout


@pytest.mark.slow
def test_nlp_env_from_readme(example):
    before = {name: (example.root / "env" / name).read_text()
              for name in ("conda-lock.yml", "conda-linux-64.lock", "conda-osx-arm64.lock")}
    example.hb("lock", "//env:nlp-lock", timeout=600)
    # re-locking in another checkout changes nothing of the conda packages but the file:// URLs into
    # that checkout's hb-out (PyPI may have released a newer wheel since the lock was committed)
    for name, text in before.items():
        again = (example.root / "env" / name).read_text()

        def conda_only(t):
            t = re.sub(r"file://\S*/hb-out/", "file://…/hb-out/", t)
            return [line for line in t.splitlines() if "file://" in line and ".whl" not in line]
        assert conda_only(again) == conda_only(text), name
    summary = example.build_json("//env:nlp-env")
    actions = json.loads(example.hb("aquery", "--json", "//env:nlp-env").stdout)
    assert sorted({a["mnemonic"] for a in actions}) == ["CondaChannel", "CondaFromChannel", "CondaStage", "WheelFetch"]
    # the channel was built by `hb lock`: everything else ran
    assert summary["actions"]["executed"] == sum(a["mnemonic"] != "CondaChannel" for a in actions)
    wheels = {a["params"]["filename"].split("-")[0] for a in actions if a["mnemonic"] == "WheelFetch"}
    assert {"numpy", "tokenizers"} <= wheels
    from support import run_in_prefix

    tree = example.root / summary["targets"]["//env:nlp-env"][0]["path"]
    assert run_in_prefix(tree, "/opt/env/bin/hb-hello").stdout == "hello from /opt/env\n"
    assert oct(tree.stat().st_mode & 0o777) == oct(0o755)  # published directories are not 0700
    assert example.build_json("//env:nlp-env")["actions"]["executed"] == 0


EXAMPLE_OUTPUTS = ("//env:nlp", "//env:nlp-gpu", "//env:nlp-env", "//env:nlp-gpu-env", "//env:nlp-sbom",
                   "//env:nlp-gpu-sbom")


@pytest.mark.slow
def test_readme_main_job_is_bit_reproducible(tmp_path):
    """The README's main command, `hb build //env:nlp-gpu` from the committed locks (no solving), in
    two checkouts at different paths with two empty caches: every image has the same manifest
    digest and every environment the same tree digest."""
    builds = []
    for name in ("one", "checkout-two"):
        example = copy_example(tmp_path / name / "examples", tmp_path / name / "cache")
        locks = {p: p.read_bytes() for p in (example.root / "env").glob("conda-*")}
        summary = example.build_json("//env:nlp-gpu", *EXAMPLE_OUTPUTS[:1], *EXAMPLE_OUTPUTS[2:])
        assert {p: p.read_bytes() for p in locks} == locks  # the build never re-locks
        layout = example.root / "hb-out/env/nlp-gpu"
        assert oct(layout.stat().st_mode & 0o777) == oct(0o755)
        manifests = {}
        for label in ("nlp", "nlp-gpu"):
            index = json.loads((example.root / f"hb-out/env/{label}/index.json").read_text())
            assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
            manifests[label] = index["manifests"][0]["digest"]
        trees = {label: summary["targets"][label][0]["digest"] for label in EXAMPLE_OUTPUTS}
        builds.append((manifests, trees))
        assert example.build_json("//env:nlp-gpu")["actions"]["executed"] == 0
    assert builds[0] == builds[1]
    # hb verify: every action rebuilt from nothing gives the outputs of the last build (R = 1)
    verdict = json.loads(example.hb("verify", "--json", "//env:nlp", "//env:nlp-gpu", timeout=600).stdout)
    assert verdict["R"] == 1 and verdict["total"] == verdict["identical"] > 20, verdict["first_difference"]
    for label in ("//env:nlp", "//env:nlp-gpu"):
        assert verdict["targets"][label]["identical"]
        assert [m["recorded"] for m in verdict["targets"][label]["manifests"]] == [builds[1][0][label[6:]]]


def test_query_and_graph_show_the_channel_environment_yml_names(example):
    """environment.yml's `channels: [//channel:test-channel]` is a dependency of the lock, so of the image."""
    deps = example.hb("query", "deps(//env:nlp-gpu)").stdout.split()
    assert "//channel:test-channel" in deps and "//env:nlp-gpu-lock" in deps
    assert "//env:nlp-gpu-lock" in example.hb("query", "rdeps(//..., //channel:test-channel)").stdout.split()
    dot = example.hb("graph", "--format", "dot", "//env:nlp-gpu").stdout
    assert re.search(r'"//env:nlp-gpu-lock"\s*->\s*"//channel:test-channel"', dot), dot
    # editing the file's channels re-runs analysis: the edge follows the file
    env_file = example.root / "env/environment.yml"
    env_file.write_text(env_file.read_text().replace("//channel:test-channel", "https://conda.example.invalid/c"))
    assert "//channel:test-channel" not in example.hb("query", "deps(//env:nlp-gpu-lock)").stdout.split()


def test_a_channel_label_that_is_not_a_target_is_an_error(example):
    env_file = example.root / "env/environment.yml"
    env_file.write_text(env_file.read_text().replace("//channel:test-channel", "//channel:no-such-channel"))
    proc = example.hb("build", "//env:nlp-env", check=False)
    assert proc.returncode != 0
    assert "no target named 'no-such-channel' in package //channel" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_research_metrics_run_inside_the_environment_and_verify(example):
    """env_run: numpy from the example environment's PyPI wheels, on a bundled data file, as a build target."""
    summary = example.build_json("//research:metrics")
    metrics = json.loads((example.root / summary["targets"]["//research:metrics"][0]["path"]).read_text())
    assert metrics["n"] == 200 and abs(metrics["fit"]["slope"] - 1.5) < 0.05
    assert metrics["numpy"].startswith("2.")
    # provenance: the artifact -> the environment's tree digest -> the lock file
    statement = json.loads((example.root / "hb-out/research/metrics/provenance.intoto.json").read_text())
    out = example.root / "hb-out/research/metrics/metrics.json"
    assert statement["subject"] == [{"name": "hb-out/research/metrics/metrics.json",
                                     "digest": {"sha256": hashlib.sha256(out.read_bytes()).hexdigest()}}]
    deps = {d["annotations"]["kind"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
            if d["annotations"]["kind"] != "input"}
    env_tree = example.build_json("//env:nlp-env")["targets"]["//env:nlp-env"][0]["digest"].split("/")[0]
    assert deps["environment"]["digest"] == {"blake3": env_tree}
    assert deps["lockfile"]["uri"] == "env/conda-lock.yml"
    assert deps["lockfile"]["digest"]["sha256"] == hashlib.sha256(
        (example.root / "env/conda-lock.yml").read_bytes()).hexdigest()
    key = example.root.parent / "research.key"
    example.hb("keygen", str(key))
    example.hb("attest", "sign", "//research:metrics", "--key", str(key))
    example.hb("attest", "verify", "hb-out/research/metrics.dsse.json", "--key", f"{key}.pub",
               "--subject", "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest())
    assert example.build_json("//research:metrics")["actions"]["executed"] == 0
    verdict = json.loads(example.hb("verify", "--json", "//research:metrics", timeout=600).stdout)
    assert verdict["R"] == 1 and verdict["targets"]["//research:metrics"]["identical"]
    # the data changes: only the run re-executes
    data = example.root / "research/measurements.csv"
    data.write_text(data.read_text() + "10.0,15.3\n")
    again = example.build_json("//research:metrics")
    assert again["actions"]["executed"] == 1
    assert json.loads((example.root / again["targets"]["//research:metrics"][0]["path"]).read_text())["n"] == 201


@pytest.mark.slow
def test_research_step_runs_inside_the_image_root_filesystem(example):
    """env_run(image = ...): the image's own Python (Debian base + the environment's numpy at /opt/env), with
    the image's root filesystem as `/`, read-only; provenance: artifact -> image manifest digest -> locks."""
    summary = example.build_json("//research:in-image", "//env:nlp")
    seen = json.loads((example.root / "hb-out/research/in-image/image_check.json").read_text())
    assert seen["numpy_from"] == "/opt/env/lib/python3.11/site-packages/numpy" and seen["numpy"].startswith("2.")
    assert seen["busybox"] and seen["read_only"] and seen["hashseed"] == "0" and seen["epoch"] == "0"
    assert not (example.root / "hb-out/research/in-image/written-by-a-build-step").exists()
    index = json.loads((example.root / "hb-out/env/nlp/index.json").read_text())
    statement = json.loads((example.root / "hb-out/research/in-image/provenance.intoto.json").read_text())
    out = example.root / "hb-out/research/in-image/image_check.json"
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0] == {"uri": "//env:nlp", "digest": {"sha256": index["manifests"][0]["digest"][7:]},
                       "annotations": {"kind": "image"}}
    locks = {d["uri"]: d["digest"]["sha256"] for d in deps if d["annotations"]["kind"] == "lockfile"}
    assert locks == {p: hashlib.sha256((example.root / p).read_bytes()).hexdigest()
                     for p in ("env/conda-lock.yml", "base/debs.lock.json")}
    assert summary["actions"]["executed"] > 0
    assert example.build_json("//research:in-image")["actions"]["executed"] == 0
    # the script changes: only the run re-executes (the unpacked root filesystem is cached), and the root
    # filesystem is bound from the read-only view made by the first run, not copied again
    (view,) = (example.cache / "views").iterdir()
    stamp, inode = (view / "identity").read_text(), os.stat(view / "tree/usr/bin/python3.11").st_ino
    script = example.root / "research/image_check.py"
    script.write_text(script.read_text() + "\n")
    assert example.build_json("//research:in-image")["actions"]["executed"] == 1
    assert [p.name for p in (example.cache / "views").iterdir()] == [view.name]
    assert (view / "identity").read_text() == stamp and os.stat(view / "tree/usr/bin/python3.11").st_ino == inode
    # no network inside
    example.write("research/BUILD.hermetic", (example.root / "research/BUILD.hermetic").read_text() + """
env_run(
    name = "net",
    image = "//env:nlp",
    outs = ["net.txt"],
    cmd = "python -c 'import socket; socket.create_connection((\\"1.1.1.1\\", 53), timeout=2)' > $(OUTS)",
)
""")
    failed = example.hb("build", "//research:net", check=False)
    assert failed.returncode != 0 and "command exited with status" in failed.stderr, failed.stderr
    # the root filesystem is read-only at its place in the execution root too (it is the view's bind)
    example.write("research/BUILD.hermetic", (example.root / "research/BUILD.hermetic").read_text() + """
env_run(
    name = "write-root",
    image = "//env:nlp",
    outs = ["w.txt"],
    cmd = "for d in hb-out/.internal/research/*/rootfs; do ls $d/usr/bin/python3.11; touch $d/x && echo WROTE; done > $(OUTS); true",
)
""")
    example.build_json("//research:write-root")
    assert (example.root / "hb-out/research/write-root/w.txt").read_text() == (
        "hb-out/.internal/research/write-root/rootfs/usr/bin/python3.11\n")
    assert not (view / "tree/x").exists()


@pytest.mark.slow
def test_an_md5_pinned_explicit_lock_builds_with_allow_md5_and_records_sha256s(example):
    """An explicit lock as conda-lock writes it (md5 fragments) for the example's conda packages: refused
    by default, built with allow_md5 = True, and the sha256 hb computed is in `hb build --json`."""
    import yaml

    example.build_json("//channel:test-channel")
    channel = example.root / "hb-out/channel/test-channel/channel"
    lock = yaml.safe_load((example.root / "env/conda-lock.yml").read_text())
    conda = [p for p in lock["package"] if p["platform"] == "linux-64" and p["manager"] == "conda"]
    lines = ["# platform: linux-64", "@EXPLICIT"]
    for p in conda:
        subdir, filename = p["url"].rsplit("/", 2)[-2:]
        data = (channel / subdir / filename).read_bytes()
        lines.append(f"{(channel / subdir / filename).as_uri()}#{hashlib.md5(data).hexdigest()}")
    example.write("explicit/env.lock", "\n".join(lines) + "\n")
    example.write("explicit/BUILD.hermetic", """\
        conda_env(name = "strict", lock = "env.lock")
        conda_env(name = "md5", lock = "env.lock", allow_md5 = True)
    """)
    refused = example.hb("build", "//explicit:strict", check=False)
    assert refused.returncode == 4 and "pinned by md5 only" in refused.stderr and "explicit/env.lock:3:" in refused.stderr
    summary = example.build_json("//explicit:md5")
    recorded = summary["recorded"]
    assert {path.rsplit("/", 1)[-1]: facts["sha256"] for path, facts in recorded.items()} == \
        {p["url"].rsplit("/", 1)[-1]: p["hash"]["sha256"] for p in conda}
    from support import run_in_prefix

    tree = example.root / summary["targets"]["//explicit:md5"][0]["path"]
    assert run_in_prefix(tree, "/opt/env/bin/hb-hello").stdout == "hello from /opt/env\n"
