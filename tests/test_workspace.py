import pytest

from hermetic_build.errors import UsageError
from hermetic_build.workspace import find_workspace, host_platform


def test_finds_nearest_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("HB_CACHE_DIR", raising=False)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "hermetic.toml").write_text('cache_dir = "../.cache"\nplatforms = ["linux-64", "osx-arm64"]\n')
    (tmp_path / "ws" / "a" / "b").mkdir(parents=True)
    ws = find_workspace(tmp_path / "ws" / "a" / "b")
    assert ws.root == tmp_path / "ws"
    assert ws.settings.cache_dir == tmp_path / "ws" / ".." / ".cache"
    assert ws.settings.platforms == ("linux-64", "osx-arm64")


def test_no_workspace(tmp_path):
    with pytest.raises(UsageError, match="no hermetic.toml"):
        find_workspace(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("cache_dirr = 'x'\n", "did you mean cache_dir"),
    ("platforms = 'linux-64'\n", "setting 'platforms' must be a list, not a string"),
    ("platforms = [\n", "invalid TOML"),
])
def test_bad_settings(tmp_path, text, message):
    (tmp_path / "hermetic.toml").write_text(text)
    with pytest.raises(UsageError) as exc:
        find_workspace(tmp_path)
    assert message in exc.value.render() and "hermetic.toml" in exc.value.render()


def test_host_platform_is_conda_style():
    assert host_platform() in ("linux-64", "linux-aarch64", "osx-64", "osx-arm64", "win-64")


@pytest.mark.parametrize("where, why", [
    ("/", "the root directory"),
    ("HOME", "your home directory"),
    ("ABOVE_HOME", "a directory above your home directory"),
    (".", "the workspace"),
    ("..", "a directory above the workspace"),
])
def test_cache_dir_that_would_take_others_files_with_it_is_refused(tmp_path, monkeypatch, where, why):
    home = tmp_path / "home" / "user"
    home.mkdir(parents=True)
    ws = tmp_path / "src" / "ws"
    ws.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    value = {"HOME": str(home), "ABOVE_HOME": str(home.parent), ".": str(ws), "..": str(ws.parent)}.get(where, where)
    monkeypatch.setenv("HB_CACHE_DIR", value)
    (ws / "hermetic.toml").write_text("")
    with pytest.raises(UsageError) as exc:
        find_workspace(ws)
    assert f"HB_CACHE_DIR={value} is {why}" in exc.value.message
    # the same through hermetic.toml
    monkeypatch.delenv("HB_CACHE_DIR")
    (ws / "hermetic.toml").write_text(f"cache_dir = {value!r}\n")
    with pytest.raises(UsageError, match=f"cache_dir = .* is {why}"):
        find_workspace(ws)


@pytest.mark.parametrize("text", ['".hb-cache"', '"sub/../.hb-cache"', '"link/cache"'])
def test_cache_dir_inside_the_workspace_is_refused_from_hermetic_toml(tmp_path, monkeypatch, text):
    # a checkout could bring that cache with it: its entries (and the pickled state hb loads back)
    # would be taken as hb's own (tests/adversarial/test_adv_workspace_settings.py)
    monkeypatch.delenv("HB_CACHE_DIR", raising=False)
    (tmp_path / "inside").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "inside")
    (tmp_path / "hermetic.toml").write_text(f'jobs = 1\ncache_dir = {text}\n')
    with pytest.raises(UsageError) as exc:
        find_workspace(tmp_path)
    assert exc.value.message.startswith("setting 'cache_dir' names a directory inside the workspace")
    assert str(exc.value.location) == f"{tmp_path / 'hermetic.toml'}:2" and "HB_CACHE_DIR" in exc.value.hint


def test_hb_cache_dir_inside_the_workspace_is_your_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("HB_CACHE_DIR", str(tmp_path / ".hb-cache"))
    (tmp_path / "hermetic.toml").write_text('cache_dir = ".ignored"\n')
    settings = find_workspace(tmp_path).settings
    assert settings.cache_dir == tmp_path / ".hb-cache" and settings.privileged == ()


@pytest.mark.parametrize("text, message", [
    # element types (a traceback later, when the list was sorted, encoded or imported)
    ('env_allowlist = [1, "A"]\n', "setting 'env_allowlist' must be a list of strings; 1 is an integer"),
    ('env_allowlist = ["A=B"]\n', "setting 'env_allowlist' has 'A=B', which is not a variable name"),
    ('rule_modules = [1]\n', "setting 'rule_modules' must be a list of strings; 1 is an integer"),
    ('rule_modules = [".."]\n', "setting 'rule_modules' has '..', which is not an absolute module name such as rules"),
    ('platforms = ["../../x"]\n', "setting 'platforms' has '../../x', which is not a conda platform name such as linux-64"),
    # ranges (source_date_epoch: what a timestamp can hold, else an OverflowError when an image is written)
    ("source_date_epoch = 100000000000000000000\n",
     "setting 'source_date_epoch' must be an integer from 0 to 253402300799, not 100000000000000000000"),
    ("source_date_epoch = -5\n", "setting 'source_date_epoch' must be an integer from 0 to 253402300799, not -5"),
    ("source_date_epoch = true\n", "setting 'source_date_epoch' must be an integer, not a boolean"),
    ("jobs = -3\n", "setting 'jobs' must be an integer from 0 to 10000, not -3"),
    ("remote_timeout = 0\n", "setting 'remote_timeout' must be a positive integer of at most 86400, not 0"),
    ('remote_download = "weird"\n', "setting 'remote_download' must be one of 'minimal', 'all', not 'weird'"),
    # remote URLs: a usage error naming hermetic.toml, not a ValueError from the store
    ('remote_cache = "http://"\n', "setting 'remote_cache' is not a usable URL: 'http://' names no host"),
    ('remote_cache = "ftp://x"\n', "setting 'remote_cache' is not a usable URL: 'ftp://x' has scheme 'ftp'"),
    ('remote_cache = "grpc://h:99999"\n', "setting 'remote_cache' is not a usable URL: 'grpc://h:99999' cannot be parsed"),
    ('remote_cache = "oci://host"\n', "setting 'remote_cache' is not a usable URL: 'oci://host' is not a registry repository"),
    ('remote_executor = "http://h:1"\n', "setting 'remote_executor' is not a usable URL: 'http://h:1' has scheme 'http'"),
])
def test_settings_of_the_wrong_type_or_range_are_refused_at_their_line(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("HB_CACHE_DIR", raising=False)
    (tmp_path / "hermetic.toml").write_text('# the workspace\n# settings\n' + text)
    with pytest.raises(UsageError) as exc:
        find_workspace(tmp_path)
    assert exc.value.message.startswith(message), exc.value.message
    assert str(exc.value.location) == f"{tmp_path / 'hermetic.toml'}:3"
    assert "Traceback" not in exc.value.render()


def test_settings_at_the_edges_of_their_ranges_are_accepted(tmp_path, monkeypatch):
    monkeypatch.delenv("HB_CACHE_DIR", raising=False)
    (tmp_path / "hermetic.toml").write_text(
        'cache_dir = "../cache"\nsource_date_epoch = 253402300799\njobs = 0\nenv_allowlist = ["HTTP_PROXY", "A"]\n'
        'rule_modules = ["rules", "my.rules_2"]\nremote_cache = "oci://localhost:5000/team/cache"\n'
        'remote_executor = "grpcs://build.example:8980/main"\nremote_download = "all"\n')
    settings = find_workspace(tmp_path).settings
    assert settings.source_date_epoch == 253402300799 and settings.env_allowlist == ("A", "HTTP_PROXY")
    assert settings.rule_modules == ("rules", "my.rules_2") and settings.remote_download == "all"
    # what reaches outside the workspace, each at its line, for `hb trust` (tests/test_trust.py)
    assert [(s.key, s.location.line) for s in settings.privileged] == [
        ("cache_dir", 1), ("env_allowlist", 4), ("rule_modules", 5), ("remote_cache", 6), ("remote_executor", 7)]
