"""Opening paths beneath a directory descriptor without following links."""

from __future__ import annotations

import os

import pytest

from hermetic_build.anchored import RefusedPath, open_directory, open_regular_file, open_scanned_file, open_subdirectory


@pytest.fixture
def base(tmp_path):
    (tmp_path / "root/a/b").mkdir(parents=True)
    (tmp_path / "root/a/b/f").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/f").write_text("outside")
    os.symlink(tmp_path / "outside", tmp_path / "root/link")
    os.symlink(tmp_path / "outside/f", tmp_path / "root/a/filelink")
    os.mkfifo(tmp_path / "root/a/fifo")
    fd = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_open_directory_walks_real_directories(base):
    fd = open_directory(base, "a/b")
    try:
        file_fd, st = open_regular_file(fd, "f")
        with os.fdopen(file_fd) as f:
            assert f.read() == "inside"
        assert st.st_size == 6
    finally:
        os.close(fd)


@pytest.mark.parametrize("rel, message", [
    ("link", "link is a symbolic link (-> "),
    ("link/f", "link is a symbolic link (-> "),
    ("a/filelink", "a/filelink is a symbolic link (-> "),
    ("a/b/f", "a/b/f is a regular file"),
    ("a/../link", "leaves the directory"),
])
def test_open_directory_refuses_links_and_non_directories(base, rel, message):
    with pytest.raises(RefusedPath, match=message.replace("(", r"\(")):
        open_directory(base, rel)


def test_open_directory_missing_component(base):
    with pytest.raises(FileNotFoundError):
        open_directory(base, "a/nope")


def test_open_regular_file_refuses_links_and_special_files(base):
    a = open_directory(base, "a")
    try:
        with pytest.raises(RefusedPath, match="filelink is a symbolic link"):
            open_regular_file(a, "filelink")
        with pytest.raises(RefusedPath, match="fifo is a special file"):  # never opened: would block
            open_regular_file(a, "fifo")
        with pytest.raises(RefusedPath, match="b is a directory"):
            open_regular_file(a, "b")
    finally:
        os.close(a)


def test_open_subdirectory_refuses_a_link(base):
    with pytest.raises(RefusedPath, match="shown-name is a symbolic link"):
        open_subdirectory(base, "link", "shown-name")


def test_open_scanned_file_opens_only_the_file_the_listing_found(base):
    a = open_directory(base, "a")
    try:
        b = open_directory(a, "b")
        scanned = os.stat("f", dir_fd=b, follow_symlinks=False)
        fd, st = open_scanned_file(b, "f", scanned, "a/b/f")
        try:
            assert os.read(fd, 100) == b"inside" and (st.st_dev, st.st_ino) == (scanned.st_dev, scanned.st_ino)
        finally:
            os.close(fd)
        # swapped after the listing: for another file, a link to it, or a fifo (never opened, never blocks)
        os.rename("f", "g", src_dir_fd=b, dst_dir_fd=b)
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=b), "w") as f:
            f.write("other")
        with pytest.raises(RefusedPath, match="a/b/f changed while it was being collected"):
            open_scanned_file(b, "f", scanned, "a/b/f")
        os.unlink("f", dir_fd=b)
        os.symlink("g", "f", dir_fd=b)
        with pytest.raises(RefusedPath, match="is a symbolic link"):
            open_scanned_file(b, "f", scanned, "a/b/f")
        with pytest.raises(RefusedPath, match="fifo is a special file"):
            open_scanned_file(a, "fifo", os.stat("fifo", dir_fd=a, follow_symlinks=False), "a/fifo")
        os.close(b)
    finally:
        os.close(a)
