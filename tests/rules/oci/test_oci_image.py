"""End-to-end: the example's CPU and GPU images, validated and run with real tools (skopeo, umoci,
bubblewrap), pushed to a real registry, rebuilt elsewhere bit for bit, and bumped one package."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
from oci_support import layout_image, validate
from support import Workspace, require_tool

pytestmark = pytest.mark.slow


def _unpack(tmp_path, layout):
    """skopeo checks blob digests, umoci checks diff_ids; returns the unpacked rootfs."""
    copy = tmp_path / "copy"
    subprocess.run([require_tool("skopeo"), "copy", f"oci:{layout}:latest", f"oci:{copy}:latest"], check=True,
                   capture_output=True)
    bundle = tmp_path / "bundle"
    subprocess.run([require_tool("umoci"), "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
                   check=True, capture_output=True)
    return bundle / "rootfs"


def _run(rootfs, *argv):
    """Run argv in the rootfs as the container's root (bubblewrap: no network, only the image)."""
    return subprocess.run([require_tool("bwrap"), "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
                           "--unshare-all", "--clearenv", "--setenv", "PATH", "/opt/env/bin:/usr/bin:/bin", *argv],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,backend", [("nlp", "cpu"), ("nlp-gpu", "cuda12")])
def test_image_is_valid_and_runs(images, tmp_path, name, backend):
    layout = images.root / "hb-out/env" / name
    assert images.summary["targets"][f"//env:{name}"][0]["path"] == f"hb-out/env/{name}"
    digest, manifest, config = layout_image(layout)
    validate("image-index-schema", json.loads((layout / "index.json").read_text()))
    validate("image-manifest-schema", manifest)
    validate("config-schema", config)
    assert config["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in _layers(images, name)]
    assert manifest["annotations"]["dev.hermetic-build.lock.content-hash"]
    rootfs = _unpack(tmp_path, layout)
    proc = _run(rootfs, "/opt/env/bin/hb-tokenize", "hello", "world")  # the entry point, via /bin/sh + python
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("tokens=2 ") and "prefix=/opt/env" in lines[0]
    # tokenizers and numpy from PyPI wheels: a BPE tokenizer trained on the bundled corpus
    assert lines[1] == ("bpe vocab=120 tokens=['he', 'l', 'l', 'o', 'w', 'o', 'r', 'ld'] "
                        "ids=[37, 21, 21, 24, 32, 24, 27, 42]"), proc.stdout
    assert re.fullmatch(r"numpy 2\.\d+\.\d+ mean_id=28\.500 max_id=42", lines[2]), proc.stdout
    script = (rootfs / "opt/env/bin/tqdm").read_text()  # a wheel's console script, for the final prefix
    assert script.startswith("#!/opt/env/bin/python\n")
    proc = _run(rootfs, "/opt/env/bin/hb-hello")  # an executable linked against the env's libhb
    assert proc.stdout == "hello from /opt/env\n", proc.stderr
    proc = _run(rootfs, "/opt/env/bin/hb-accel")
    assert f"backend={backend}" in proc.stdout, proc.stderr
    # the environment's conda-meta records the lock's URLs, not this machine's cache paths
    meta = next((rootfs / "opt/env/conda-meta").glob("hb-hello-*.json"))
    assert "extracted_package_dir" not in json.loads(meta.read_text())
    if backend == "cuda12":  # the CUDA runtime wheel loads; without a driver it says so
        proc = _run(rootfs, "/opt/env/bin/python", "-c", CUDA_PROBE)
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout) in (35, 100), proc.stdout  # cudaErrorInsufficientDriver / cudaErrorNoDevice


CUDA_PROBE = """
import ctypes, glob
lib = ctypes.CDLL(glob.glob("/opt/env/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12")[0])
count = ctypes.c_int(0)
print(lib.cudaGetDeviceCount(ctypes.byref(count)))
"""


def _layers(ws, name):
    """Per layer: its digest, diff_id and name (from the config's history: `hb //env:nlp: <name>`)."""
    _, manifest, config = layout_image(ws.root / "hb-out/env" / name)
    history = [h for h in config["history"] if not h.get("empty_layer")]
    return [{"digest": layer["digest"], "diff_id": diff_id, "name": h["created_by"].split(": ", 1)[1]}
            for layer, diff_id, h in zip(manifest["layers"], config["rootfs"]["diff_ids"], history)]


def test_cpu_and_gpu_images_share_layers_and_gpu_config_has_nvidia_settings(images):
    _, cpu, cpu_config = layout_image(images.root / "hb-out/env/nlp")
    _, gpu, gpu_config = layout_image(images.root / "hb-out/env/nlp-gpu")
    cpu_layers = [layer["digest"] for layer in cpu["layers"]]
    gpu_layers = [layer["digest"] for layer in gpu["layers"]]
    different = [i for i, (a, b) in enumerate(zip(cpu_layers, gpu_layers)) if a != b]
    names = [layer["name"] for layer in _layers(images, "nlp")]
    gpu_names = [layer["name"] for layer in _layers(images, "nlp-gpu")]
    cpu_by_name, gpu_by_name = dict(zip(names, cpu_layers)), dict(zip(gpu_names, gpu_layers))
    # only hb-accel (CPU vs CUDA build), the GPU's CUDA runtime wheel and the metadata layer differ
    differ = sorted(n for n in set(names) | set(gpu_names) if cpu_by_name.get(n) != gpu_by_name.get(n))
    assert differ == ["(environment metadata)", "hb-accel", "pypi:nvidia-cuda-runtime-cu12"]
    assert {"pypi:numpy", "pypi:tokenizers"} <= set(names)  # each wheel is its own layer, shared
    assert len(gpu_layers) == len(cpu_layers) + 1 == 1 + 7 + len(_wheels(images, "conda-lock.gpu.yml")) + 1
    env = dict(item.split("=", 1) for item in gpu_config["config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.4"
    assert gpu_config["config"]["Labels"]["com.nvidia.cuda.version"] == "12.4"
    cpu_env = dict(item.split("=", 1) for item in cpu_config["config"]["Env"])
    assert "NVIDIA_VISIBLE_DEVICES" not in cpu_env and "com.nvidia.cuda.version" not in cpu_config["config"]["Labels"]


def _wheels(ws, lockfile):
    from conda_lock.lockfile import parse_conda_lock_file

    return [p for p in parse_conda_lock_file(ws.root / "env" / lockfile).package if p.manager == "pip"]


def test_second_build_runs_nothing(images):
    again = images.build_json("//env:nlp", "//env:nlp-gpu")
    assert again["actions"]["executed"] == 0


def test_fresh_cache_in_another_directory_gives_identical_digests(images, tmp_path):
    """Same committed locks, another directory, an empty cache: the same manifest digests."""
    other = tmp_path / "elsewhere"
    shutil.copytree(images.root, other, ignore=shutil.ignore_patterns("hb-out"))
    ws = Workspace(other, tmp_path / "fresh-cache")
    summary = ws.build_json("//env:nlp", "//env:nlp-gpu")
    assert summary["actions"]["cached"] == 0
    for name in ("nlp", "nlp-gpu"):
        assert layout_image(other / "hb-out/env" / name)[0] == layout_image(images.root / "hb-out/env" / name)[0]
        assert (other / "hb-out/env" / name / "index.json").read_bytes() == \
            (images.root / "hb-out/env" / name / "index.json").read_bytes()


def test_bumping_one_package_changes_only_its_layer_and_the_final_one(images, tmp_path):
    # the same cache: the channel's packages (rebuilt per cache, not bit-reproducible) stay the same
    ws = Workspace(tmp_path / "bump", images.cache)
    shutil.copytree(images.root, ws.root, ignore=shutil.ignore_patterns("hb-out"))
    before = _layer_map(images, "nlp")
    env_yml = ws.root / "env/environment.yml"
    env_yml.write_text(env_yml.read_text().replace("hb-vocab >=2", "hb-vocab 1.*"))
    ws.hb("lock", "//env:nlp-lock", timeout=600)
    out = ws.build_json("//env:nlp")
    assert out["actions"]["executed"] >= 3
    after = _layer_map(ws, "nlp")
    changed = sorted(name for name in after if after[name] != before.get(name))
    assert changed == ["(environment metadata)", "hb-vocab"]
    log = ws.hb("build", "//env:nlp").stderr
    assert "0 actions executed" in log


def _layer_map(ws, name):
    return {layer["name"]: layer["digest"] for layer in _layers(ws, name)}


def test_push_to_plain_registry_round_trips(images, registry, tmp_path):
    digest = layout_image(images.root / "hb-out/env/nlp")[0]
    ref = f"{registry.host}/team/nlp:v1"
    out = images.hb("push", "//env:nlp", ref)
    assert out.stdout.strip() == f"{ref}@{digest}"
    assert "already there" in out.stderr
    # pulled back with skopeo: the same manifest bytes
    raw = subprocess.run([require_tool("skopeo"), "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    subprocess.run([require_tool("skopeo"), "copy", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{tmp_path / 'pulled'}:latest"], check=True, capture_output=True)
    assert layout_image(tmp_path / "pulled")[0] == digest
    # pushing again uploads nothing; a chunked push of the GPU image re-uses the shared layers by mount
    again = images.hb("push", "//env:nlp", ref)
    assert re.search(r"0 blobs uploaded .* already there", again.stderr)
    gpu = images.hb("push", "//env:nlp-gpu", f"{registry.host}/team/nlp-gpu:v1", "--chunk-size", "65536",
                    "--mount-from", "team/nlp")
    assert re.search(r"[1-9]\d* mounted", gpu.stderr), gpu.stderr
    assert gpu.stdout.strip().endswith(layout_image(images.root / "hb-out/env/nlp-gpu")[0])


def test_push_with_tls_and_htpasswd(images, tls_registry):
    digest = layout_image(images.root / "hb-out/env/nlp")[0]
    ref = f"{tls_registry.host}/team/nlp:v1"
    env = {"HB_REGISTRY_USER": "alice", "HB_REGISTRY_PASSWORD": "s3cret"}
    ok = _hb_env(images, env, "push", "//env:nlp", ref, "--ca", str(tls_registry.ca))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{ref}@{digest}"
    raw = subprocess.run([require_tool("skopeo"), "inspect", "--raw", "--creds", "alice:s3cret",
                          "--cert-dir", str(_cert_dir(tls_registry)), f"docker://{ref}"],
                         check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    wrong = _hb_env(images, {**env, "HB_REGISTRY_PASSWORD": "nope"}, "push", "//env:nlp", ref, "--ca",
                    str(tls_registry.ca))
    assert wrong.returncode == 7
    assert "was refused" in wrong.stderr and "401" in wrong.stderr and "HB_REGISTRY_PASSWORD" in wrong.stderr
    guessed_plain = _hb_env(images, env, "push", "//env:nlp", f"{tls_registry.host}/team/x:v1")
    assert guessed_plain.returncode == 7
    assert "probably speaks TLS; pass --ca" in guessed_plain.stderr, guessed_plain.stderr
    untrusted = _hb_env(images, env, "push", "//env:nlp", f"oci+https://{tls_registry.host}/team/x:v1")
    assert untrusted.returncode == 7
    assert "TLS error" in untrusted.stderr and "--ca" in untrusted.stderr, untrusted.stderr


def _cert_dir(server):
    d = server.ca.parent / "certs.d"
    d.mkdir(exist_ok=True)
    shutil.copy(server.ca, d / "ca.crt")
    return d


def _hb_env(ws, extra, *args):
    import sys

    env = {**ws.env(), **extra}
    return subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=ws.root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_docker_archive_is_readable_by_skopeo(images):
    archive = images.root / "hb-out/env/nlp-docker/nlp-docker.tar"
    inspect = json.loads(subprocess.run([require_tool("skopeo"), "inspect", f"docker-archive:{archive}"],
                                        check=True, capture_output=True, text=True).stdout)
    _, manifest, config = layout_image(images.root / "hb-out/env/nlp")
    # skopeo names docker-archive layers by their uncompressed digests: the config's diff_ids
    assert inspect["Layers"] == config["rootfs"]["diff_ids"]
    assert inspect["Architecture"] == "amd64" and inspect["Os"] == "linux"


def test_load_without_a_daemon_is_a_clean_error(images, tmp_path):
    out = images.hb("load", "//env:nlp", "--docker-host", f"unix://{tmp_path}/none.sock", check=False)
    assert out.returncode == 7
    assert "no Docker-API daemon answers" in out.stderr and "--docker-host" in out.stderr


def test_push_of_a_non_image_is_a_usage_error(images):
    out = images.hb("push", "//env:nlp-env", "127.0.0.1:1/x:y", check=False)
    assert out.returncode == 2 and "cannot be used with hb push" in out.stderr


@pytest.fixture
def dockerd(tmp_path):
    """Debian's dockerd on a private socket, no iptables, no bridge; stopped by PID."""
    from support import stop

    sock = tmp_path / "docker.sock"
    log = open(tmp_path / "dockerd.log", "w")
    proc = subprocess.Popen([require_tool("dockerd"), "--host", f"unix://{sock}", "--data-root", str(tmp_path / "data"),
                             "--exec-root", str(tmp_path / "exec"), "--pidfile", str(tmp_path / "pid"),
                             "--iptables=false", "--ip6tables=false", "--bridge=none"], stdout=log, stderr=log)
    import time

    import docker

    deadline = time.monotonic() + 60
    while True:
        try:
            docker.DockerClient(base_url=f"unix://{sock}").ping()
            break
        except Exception:  # noqa: BLE001 - still starting
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "dockerd.log").read_text()[-3000:])
            time.sleep(0.2)
    yield f"unix://{sock}"
    stop(proc)
    log.close()


def test_load_into_a_real_daemon_and_run(images, dockerd):
    out = images.hb("load", "//env:nlp", "--docker-host", dockerd, timeout=300)
    assert "env/nlp:latest" in out.stdout
    import docker

    client = docker.DockerClient(base_url=dockerd)
    output = client.containers.run("env/nlp:latest", ["hello", "world"], network_mode="none", remove=True)
    assert output.decode().startswith("tokens=2 ")
    assert os.path.exists(dockerd.removeprefix("unix://"))


def _base_users(tmp_path, build):
    ws = Workspace(tmp_path / "ws", tmp_path / "cache")
    ws.root.mkdir()
    (ws.root / "hermetic.toml").write_text("")
    ws.write("app/BUILD.hermetic", build)
    return ws


def test_base_from_a_workspace_layout_pinned_by_digest(images, tmp_path):
    digest, manifest, _ = layout_image(images.root / "hb-out/env/nlp")
    ws = _base_users(tmp_path, f"""\
        oci_layout_base(name = "base", srcs = glob(["nlp-layout/**"]), digest = "{digest}")
        oci_image(name = "app", base = ":base", cmd = ["/opt/env/bin/hb-hello"], entrypoint = ["/bin/sh", "-c", "exec \\"$@\\"", "--"])
        oci_image(name = "wrong", base = ":wrong-base")
        oci_layout_base(name = "wrong-base", srcs = glob(["nlp-layout/**"]), digest = "sha256:{'0' * 64}")
    """)
    shutil.copytree(images.root / "hb-out/env/nlp", ws.root / "app/nlp-layout")
    ws.build_json("//app:app")
    _, app, app_config = layout_image(ws.root / "hb-out/app/app")
    assert [layer["digest"] for layer in app["layers"]] == [layer["digest"] for layer in manifest["layers"]]
    assert app["annotations"]["org.opencontainers.image.base.digest"] == digest
    env = dict(item.split("=", 1) for item in app_config["config"]["Env"])
    assert env["CONDA_PREFIX"] == "/opt/env"  # inherited from the base's config
    rootfs = _unpack(tmp_path, ws.root / "hb-out/app/app")
    assert _run(rootfs, "/opt/env/bin/hb-hello").stdout == "hello from /opt/env\n"
    wrong = ws.hb("build", "//app:wrong", check=False)
    assert wrong.returncode == 5 and "pinned to sha256:000" in wrong.stderr


def test_base_pulled_from_a_registry_by_digest(images, registry, tmp_path):
    digest, manifest, _ = layout_image(images.root / "hb-out/env/nlp-gpu")
    images.hb("push", "//env:nlp-gpu", f"{registry.host}/team/base:v1")
    ws = _base_users(tmp_path, f"""\
        oci_pull(name = "base", image = "{registry.host}/team/base@{digest}")
        oci_image(name = "app", base = ":base", labels = {{"stage": "app"}})
        oci_pull(name = "by-tag", image = "{registry.host}/team/base:v1")
    """)
    ws.build_json("//app:app")
    _, app, config = layout_image(ws.root / "hb-out/app/app")
    assert [layer["digest"] for layer in app["layers"]] == [layer["digest"] for layer in manifest["layers"]]
    assert config["config"]["Labels"]["com.nvidia.cuda.version"] == "12.4" and config["config"]["Labels"]["stage"] == "app"
    _unpack(tmp_path, ws.root / "hb-out/app/app")  # skopeo + umoci: digests and diff_ids hold
    by_tag = ws.hb("build", "//app:by-tag", check=False)
    assert by_tag.returncode == 4 and "not pinned by digest" in by_tag.stderr


def test_app_layer_from_files_and_generated_outputs(images, tmp_path):
    digest, manifest, _ = layout_image(images.root / "hb-out/env/nlp")
    ws = _base_users(tmp_path, f"""\
        oci_layout_base(name = "base", srcs = glob(["nlp-layout/**"]), digest = "{digest}")
        genrule(name = "greeting", outs = ["greeting.txt"], cmd = "echo generated > $(OUTS)")
        oci_files(name = "app-files", srcs = ["run.sh", ":greeting"], prefix = "/app")
        oci_image(name = "app", base = ":base", layers = [":app-files"], entrypoint = ["/app/run.sh"])
    """)
    shutil.copytree(images.root / "hb-out/env/nlp", ws.root / "app/nlp-layout")
    ws.write("app/run.sh", "#!/bin/sh\nread line < /app/greeting.txt\necho \"$line\"\nexec /opt/env/bin/hb-hello\n")
    (ws.root / "app/run.sh").chmod(0o755)
    ws.build_json("//app:app")
    _, app, config = layout_image(ws.root / "hb-out/app/app")
    assert len(app["layers"]) == len(manifest["layers"]) + 1
    assert config["config"]["Entrypoint"] == ["/app/run.sh"]
    rootfs = _unpack(tmp_path, ws.root / "hb-out/app/app")
    proc = _run(rootfs, "/app/run.sh")
    assert proc.stdout == "generated\nhello from /opt/env\n", proc.stderr
