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
