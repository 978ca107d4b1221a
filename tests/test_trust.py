"""`hb trust` (hermetic_build/trust.py): settings of hermetic.toml that reach outside the workspace
take effect only once the user trusted them, for this checkout and these values."""

import json
import os

import pytest

from hermetic_build.trust import privileged, trust_file

GENRULE = 'genrule(name = "g", outs = ["o.txt"], cmd = "echo hi > $(OUTS)")\n'


@pytest.mark.parametrize("key, value, needs", [
    ("cache_dir", "/somewhere", True),
    ("remote_cache", "https://cache.example", True),
    ("remote_executor", "grpcs://engine.example:443", True),
    ("env_allowlist", ["GITHUB_TOKEN"], True),
    ("env_allowlist", [], False),
    ("rule_modules", ["rules"], False),
    ("rule_modules", ["rules", "team.rules"], True),
    ("starlark_memory_mb", 256, False),
    ("starlark_memory_mb", 2048, False),
    ("starlark_memory_mb", 1 << 20, True),
    ("starlark_timeout_s", 60, False),
    ("starlark_timeout_s", 86400, True),
    ("platforms", ["linux-64"], False),
    ("remote_upload", True, False),  # only with a remote, which is itself trusted or yours
    ("jobs", 4, False),
])
def test_which_settings_need_trust(key, value, needs):
    assert privileged(key, value) is needs


def _ws(workspace, toml: str):
    workspace.write("hermetic.toml", toml)
    workspace.write("p/BUILD.hermetic", GENRULE)
    return workspace


def test_untrusted_setting_is_refused_at_its_line_and_trust_is_per_value(workspace, monkeypatch):
    monkeypatch.setenv("TOKEN", "t0ken")
    ws = _ws(workspace, 'platforms = ["linux-64"]\nenv_allowlist = ["TOKEN"]\n')
    proc = ws.hb("build", "//p:g", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"usage error: {ws.root / 'hermetic.toml'}:2: this workspace's hermetic.toml sets")
    assert 'line 2: env_allowlist = ["TOKEN"]: passes the values of these variables' in proc.stderr
    assert f"run `hb trust` in {ws.root}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (ws.root / "hb-out").exists() and not ws.cache.exists()  # refused before anything ran

    shown = ws.hb("trust").stdout
    assert f"{ws.root / 'hermetic.toml'}:2: env_allowlist = [\"TOKEN\"]" in shown and str(trust_file()) in shown
    ws.hb("build", "//p:g")
    recorded = json.loads(trust_file().read_text())["workspaces"][str(ws.root.resolve())]
    assert recorded == {"env_allowlist": ["TOKEN"]}
    assert oct(trust_file().stat().st_mode & 0o777) == "0o600"

    ws.write("hermetic.toml", 'platforms = ["linux-64"]\nenv_allowlist = ["TOKEN", "AWS_SECRET_ACCESS_KEY"]\n')
    proc = ws.hb("build", "//p:g", check=False)  # a changed value is asked again
    assert proc.returncode == 2 and '"AWS_SECRET_ACCESS_KEY"]' in proc.stderr

    ws.write("hermetic.toml", 'platforms = ["linux-64"]\nenv_allowlist = ["TOKEN"]\n')
    ws.hb("build", "//p:g")
    assert "nothing trusted" in ws.hb("trust", "--revoke").stdout
    assert ws.hb("build", "//p:g", check=False).returncode == 2


def test_trust_is_for_one_checkout(workspace, tmp_path):
    ws = _ws(workspace, 'env_allowlist = ["TOKEN"]\n')
    ws.hb("trust")
    other = tmp_path / "clone"
    other.mkdir()
    (other / "hermetic.toml").write_text('env_allowlist = ["TOKEN"]\n')
    (other / "p").mkdir()
    (other / "p" / "BUILD.hermetic").write_text(GENRULE)
    proc = ws.hb("build", "//p:g", check=False, cwd=other)
    assert proc.returncode == 2 and f"run `hb trust` in {other}" in proc.stderr
    ws.hb("build", "//p:g")


def test_what_you_choose_yourself_needs_no_trust(workspace, tmp_path):
    ws = _ws(workspace, f'cache_dir = "{tmp_path / "their-cache"}"\nremote_cache = "http://127.0.0.1:9/x"\n'
                        f'remote_executor = "grpc://127.0.0.1:9"\n')
    proc = ws.hb("build", "//p:g", check=False)  # HB_CACHE_DIR (support.Workspace) makes cache_dir moot
    assert proc.returncode == 2 and "cache_dir" not in proc.stderr.split("hint:")[0]
    assert "line 2: remote_cache" in proc.stderr and "line 3: remote_executor" in proc.stderr
    # the command line's remote replaces hermetic.toml's: only the executor is left to trust
    proc = ws.hb("explain", "--remote-cache", "http://127.0.0.1:9/mine", "//p:g", check=False)
    assert proc.returncode == 2 and "remote_cache" not in proc.stderr.split("hint:")[0], proc.stderr
    assert "line 3: remote_executor" in proc.stderr
    assert not trust_file().exists() or str(ws.root.resolve()) not in trust_file().read_text()


@pytest.fixture
def damageable_trust_file():
    """The session's trust file, put back as it was after the test damaged it."""
    trust_file().parent.mkdir(parents=True, exist_ok=True)
    saved = trust_file().read_bytes() if trust_file().exists() else None
    yield trust_file()
    if saved is None:
        trust_file().unlink()
    else:
        trust_file().write_bytes(saved)


def test_a_workspace_without_such_settings_never_reads_the_trust_file(workspace, damageable_trust_file):
    ws = _ws(workspace, 'platforms = ["linux-64"]\nstarlark_memory_mb = 512\n')
    damageable_trust_file.write_text("not json")
    ws.hb("build", "//p:g")
    assert "sets nothing that needs trust" in ws.hb("trust").stdout


def test_a_damaged_trust_file_is_one_clean_error(workspace, damageable_trust_file):
    ws = _ws(workspace, 'env_allowlist = ["TOKEN"]\n')
    for damaged in ("not json", '{"version": 1, "workspaces": []}', "[" * 100000, '{"version": 9}'):
        damageable_trust_file.write_text(damaged)
        proc = ws.hb("build", "//p:g", check=False)
        assert proc.returncode == 2 and f"{damageable_trust_file} is not a trust file hb wrote" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_concurrent_trusts_keep_every_entry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from hermetic_build import trust
    from hermetic_build.errors import Location

    roots = []
    for i in range(16):
        (tmp_path / f"w{i}").mkdir()
        roots.append(tmp_path / f"w{i}")
    setting = trust.PrivilegedSetting("env_allowlist", ["A"], Location("hermetic.toml", 1))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: trust.record(r, (setting,)), roots))
    recorded = json.loads(trust_file().read_text())["workspaces"]
    assert all(recorded[str(r.resolve())] == {"env_allowlist": ["A"]} for r in roots)
    assert not [n for n in os.listdir(trust_file().parent) if n.startswith(".trusted-settings.") and
                n != ".trusted-settings.lock"]
