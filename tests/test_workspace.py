import pytest

from hermetic_build.errors import UsageError
from hermetic_build.workspace import find_workspace, host_platform


def test_finds_nearest_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("HB_CACHE_DIR", raising=False)
    (tmp_path / "hermetic.toml").write_text('cache_dir = ".cache"\nplatforms = ["linux-64", "osx-arm64"]\n')
    (tmp_path / "a" / "b").mkdir(parents=True)
    ws = find_workspace(tmp_path / "a" / "b")
    assert ws.root == tmp_path
    assert ws.settings.cache_dir == tmp_path / ".cache"
    assert ws.settings.platforms == ("linux-64", "osx-arm64")


def test_no_workspace(tmp_path):
    with pytest.raises(UsageError, match="no hermetic.toml"):
        find_workspace(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("cache_dirr = 'x'\n", "did you mean cache_dir"),
    ("platforms = 'linux-64'\n", "must be list"),
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


def test_cache_dir_inside_the_workspace_is_fine(tmp_path, monkeypatch):
    monkeypatch.delenv("HB_CACHE_DIR", raising=False)
    (tmp_path / "hermetic.toml").write_text('cache_dir = ".hb-cache"\n')
    assert find_workspace(tmp_path).settings.cache_dir == tmp_path / ".hb-cache"
