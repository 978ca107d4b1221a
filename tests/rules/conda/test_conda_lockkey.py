"""The inputs key `hb lock` records (`hb.inputs.<platform>`): a lock whose key matches its inputs is
fresh without conda-lock; any other input, recorded content hash or key falls back to conda-lock and
reports exactly what a lock without the key reports."""

from __future__ import annotations

import dataclasses

import pytest

from hermetic_build.api import File
from hermetic_build.errors import AnalysisError
from rules.conda import lock as lock_rule
from rules.conda.lock import CondaLockInfo, check_fresh
from rules.conda.lockkey import (KEY_PREFIX, conda_lock_version, inputs_digest, inputs_keys, recorded_fresh,
                                 virtual_packages_key)
from rules.conda.lockread import AdoptedLock, LockMetadata
from rules.conda.spec import content_hashes, explain_staleness, input_fingerprints, read_environment

ENVIRONMENT = ("name: t\nchannels:\n  - https://example.invalid/channel\n"
               "dependencies:\n  - python 3.11.*\n  - hb-vocab\n")
EXTRA = "dependencies:\n  - hb-config\n"
VIRTUAL = {"linux-64": ["__unix", "__glibc=2.36"], "osx-arm64": ["__unix", "__osx=13.0"]}


@pytest.fixture
def root(tmp_path):
    (tmp_path / "env").mkdir()
    (tmp_path / "env/environment.yml").write_text(ENVIRONMENT)
    (tmp_path / "env/extra.yml").write_text(EXTRA)
    return tmp_path


def _info(**changes) -> CondaLockInfo:
    info = CondaLockInfo(File("env/conda-lock.yml"), File("env/environment.yml"), ("linux-64", "osx-arm64"), (),
                         virtual_packages_key(VIRTUAL), "//env:lock", extra_environments=(File("env/extra.yml"),))
    return dataclasses.replace(info, **changes)


def _files(root, info):
    return [(root / info.environment.path, info.environment.path),
            *((root / f.path, f.path) for f in info.extra_environments)]


def _locked(root, info, keyed=True) -> AdoptedLock:
    """The metadata `hb lock` writes for `info`'s inputs as they are now: conda-lock's content hashes,
    hb's fingerprints and (keyed) the inputs keys."""
    files = _files(root, info)
    spec = read_environment(files[0][0], info.platforms, info.channels, shown_path=files[0][1], extra=tuple(files[1:]))
    hashes = content_hashes(spec, info.virtual_packages_dict())
    custom = input_fingerprints(spec, info.virtual_packages_dict())
    if keyed:
        custom |= inputs_keys(inputs_digest(info.platforms, info.channels, info.virtual_packages, files), hashes)
    return AdoptedLock("conda-lock", LockMetadata(hashes, info.platforms, custom), ())


@pytest.fixture
def conda_lock_reads(monkeypatch):
    """How many times check_fresh had conda-lock read the environment."""
    calls = []
    real = lock_rule.read_environment

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(lock_rule, "read_environment", counting)
    return calls


def _outcome(root, info, lock, platform="linux-64"):
    """None for a fresh lock, else the staleness message."""
    try:
        check_fresh(info, lock, platform, root, "//env:env: ")
    except AnalysisError as exc:
        return exc.message
    return None


def test_a_lock_with_its_key_is_fresh_without_conda_lock(root, conda_lock_reads):
    info = _info()
    lock = _locked(root, info)
    conda_lock_reads.clear()
    for platform in info.platforms:
        assert f"{KEY_PREFIX}{platform}" in lock.metadata.custom_metadata
        assert _outcome(root, info, lock, platform) is None
    assert conda_lock_reads == []


def test_a_lock_without_the_key_is_checked_by_conda_lock(root, conda_lock_reads):
    info = _info()
    lock = _locked(root, info, keyed=False)
    conda_lock_reads.clear()
    assert _outcome(root, info, lock) is None
    assert conda_lock_reads  # conda-lock computed the content hash
    (root / "env/environment.yml").write_text(ENVIRONMENT + "  - nlp-tok\n")
    assert _outcome(root, info, lock) == ("//env:env: env/conda-lock.yml is stale for linux-64: "
                                          "the dependencies for linux-64 changed")


def _edit_environment(root, text):
    (root / "env/environment.yml").write_text(text)


@pytest.mark.parametrize("change, stale", [
    # the environment's bytes: a new dependency, and a comment (conda-lock still finds the lock fresh)
    (lambda root, info: (_edit_environment(root, ENVIRONMENT + "  - nlp-tok\n"), info)[1],
     "the dependencies for linux-64 changed"),
    (lambda root, info: (_edit_environment(root, ENVIRONMENT + "# a comment\n"), info)[1], None),
    (lambda root, info: ((root / "env/extra.yml").write_text(EXTRA + "  - hb-accel\n"), info)[1],
     "the dependencies for linux-64 changed"),
    (lambda root, info: dataclasses.replace(info, channels=("https://example.invalid/other",)),
     "the channels changed"),
    (lambda root, info: dataclasses.replace(info, platforms=("linux-64",)), None),
    (lambda root, info: dataclasses.replace(info, virtual_packages=virtual_packages_key(
        {**VIRTUAL, "linux-64": ["__unix", "__glibc=2.36", "__cuda=12.4"]})),
     "the virtual packages for linux-64 changed"),
    (lambda root, info: dataclasses.replace(info, environment=File("env/extra.yml"),
                                            extra_environments=(File("env/environment.yml"),)), None),
])
def test_any_other_input_falls_back_and_reports_as_before(root, conda_lock_reads, change, stale):
    """Each change of an input is checked by conda-lock, with the outcome a lock without the key has."""
    info = _info()
    keyed, plain = _locked(root, info), _locked(root, info, keyed=False)
    changed = change(root, info)
    conda_lock_reads.clear()
    outcome = _outcome(root, changed, keyed)
    assert conda_lock_reads  # not the fast path
    assert outcome == _outcome(root, changed, plain)
    if stale is None:
        assert outcome is None
    else:
        assert outcome == f"//env:env: env/conda-lock.yml is stale for linux-64: {stale}"


def test_a_tampered_content_hash_or_key_falls_back(root, conda_lock_reads):
    info = _info()
    lock = _locked(root, info)
    hashes, custom = lock.metadata.content_hash, lock.metadata.custom_metadata

    def flip(text: str) -> str:
        return ("1" if text[0] == "0" else "0") + text[1:]

    tampered_hash = dataclasses.replace(lock, metadata=dataclasses.replace(
        lock.metadata, content_hash={**hashes, "linux-64": flip(hashes["linux-64"])}))
    conda_lock_reads.clear()
    assert _outcome(root, info, tampered_hash) == ("//env:env: env/conda-lock.yml is stale for linux-64: "
                                                   "its content hash no longer matches the environment spec")
    assert conda_lock_reads
    for key in (flip(custom["hb.inputs.linux-64"]), custom["hb.inputs.osx-arm64"], 5, None):
        tampered_key = dataclasses.replace(lock, metadata=dataclasses.replace(
            lock.metadata, custom_metadata={**custom, "hb.inputs.linux-64": key}))
        conda_lock_reads.clear()
        assert _outcome(root, info, tampered_key) is None  # conda-lock finds it fresh
        assert conda_lock_reads


def test_the_key_binds_the_platform_and_its_recorded_hash():
    metadata = LockMetadata({"linux-64": "a" * 64}, ("linux-64",), inputs_keys("d" * 64, {"linux-64": "a" * 64}))
    assert recorded_fresh(metadata, "linux-64", "d" * 64)
    assert not recorded_fresh(metadata, "linux-64", "e" * 64)
    assert not recorded_fresh(metadata, "linux-64", None)  # an input could not be read
    assert not recorded_fresh(metadata, "osx-arm64", "d" * 64)
    assert not recorded_fresh(dataclasses.replace(metadata, content_hash={"linux-64": "b" * 64}), "linux-64", "d" * 64)


def test_an_unreadable_input_has_no_digest(root):
    info = _info()
    assert inputs_digest(info.platforms, info.channels, info.virtual_packages, _files(root, info))
    (root / "env/extra.yml").unlink()
    assert inputs_digest(info.platforms, info.channels, info.virtual_packages, _files(root, info)) is None


def test_staleness_reasons_ignore_the_inputs_keys(root):
    info = _info()
    lock = _locked(root, info)
    files = _files(root, info)
    spec = read_environment(files[0][0], info.platforms, shown_path=files[0][1], extra=tuple(files[1:]))
    current = input_fingerprints(spec, info.virtual_packages_dict())
    assert not any(k.startswith(KEY_PREFIX) for k in current)
    recorded = {**lock.metadata.custom_metadata, **{f"{KEY_PREFIX}{p}": "0" * 64 for p in info.platforms}}
    assert explain_staleness(recorded, current, "linux-64") == [
        "its content hash no longer matches the environment spec"]
    assert explain_staleness({**recorded, "hb.inputs.linux-64": None}, current) == [
        "its content hash no longer matches the environment spec"]


def test_the_conda_lock_version_names_the_release_not_the_installation():
    version = conda_lock_version()
    assert version.startswith("conda_lock-") and version.endswith(".dist-info")
    assert "/" not in version


@pytest.mark.parametrize("channel", [
    "https://user:secret@conda.example.invalid/channel",  # credentials conda-lock matches against the environment
    "https://conda.example.invalid/t/tk-123/channel",  # a token path
    "https://${HOST}/channel",  # an environment variable, expanded by conda-lock
])
def test_a_channel_that_may_use_the_environment_has_no_digest(root, channel):
    """conda-lock's content hash of such a channel depends on environment variables, which the digest
    does not cover: no key is written for it and it is always checked by conda-lock."""
    info = _info()
    files = _files(root, info)
    assert inputs_digest(info.platforms, info.channels, info.virtual_packages, files)
    assert inputs_digest(info.platforms, (channel,), info.virtual_packages, files) is None
    (root / "env/environment.yml").write_text(ENVIRONMENT.replace("https://example.invalid/channel", channel))
    assert inputs_digest(info.platforms, info.channels, info.virtual_packages, files) is None


def test_a_lock_whose_channel_may_use_the_environment_is_checked_by_conda_lock(root, conda_lock_reads):
    (root / "env/environment.yml").write_text(ENVIRONMENT.replace("https://example.invalid/channel",
                                                                  "https://u:p@example.invalid/channel"))
    info = _info()
    check_fresh(info, _locked(root, info), "linux-64", root, "")
    assert conda_lock_reads, "conda-lock must check a lock whose channel holds credentials"
