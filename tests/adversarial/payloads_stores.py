"""Hostile cache content for the store tests: directory blobs (trees) and action-cache entries as an
attacker with write access to a cache would write them. Plain bytes; nothing here goes through hb's
own encoders, so the payloads can be anything."""

from __future__ import annotations

import json

from hermetic_build.digest import digest_bytes


def dir_blob(entries: list[dict], *, sort: bool = False, v=1) -> bytes:
    """A directory blob with exactly these entries (in this order unless sort)."""
    if sort:
        entries = sorted(entries, key=lambda e: e["name"])
    return json.dumps({"v": v, "entries": entries}, separators=(",", ":")).encode()


def file_entry(name, digest, mode=0o644) -> dict:
    return {"name": name, "kind": "file", "digest": str(digest), "mode": mode}


def dir_entry(name, digest, mode=0o755) -> dict:
    return {"name": name, "kind": "dir", "digest": str(digest), "mode": mode}


def link_entry(name, target) -> dict:
    return {"name": name, "kind": "symlink", "target": target, "mode": 0o777}


CONTENT = b"planted by an attacker\n"
CONTENT_DIGEST = digest_bytes(CONTENT)


def hostile_trees(victim_dir: str) -> dict[str, list[bytes]]:
    """name -> the blobs of one hostile tree, root last. `victim_dir` is an absolute directory
    outside hb-out that a tree tries to write into."""
    escape = "../" * 40 + victim_dir.lstrip("/") + "/pwned"
    f = CONTENT_DIGEST
    sub = dir_blob([file_entry("pwned", f)])
    sub_digest = digest_bytes(sub)
    trees = {
        "dotdot-name": [dir_blob([file_entry(escape, f)])],
        "parent-name": [dir_blob([file_entry("..", f)])],
        "dot-name": [dir_blob([dir_entry(".", sub_digest)])],
        "slash-name": [dir_blob([file_entry("a/b", f)])],
        "absolute-name": [dir_blob([file_entry(victim_dir + "/pwned", f)])],
        "empty-name": [dir_blob([file_entry("", f)])],
        "nul-name": [dir_blob([file_entry("a\0b", f)])],
        "duplicate-names": [dir_blob([file_entry("x", f), file_entry("x", f, 0o755)])],
        "unsorted": [dir_blob([file_entry("b", f), file_entry("a", f)])],
        # the old writer made the link, then wrote the directory's content through it
        "link-then-dir-through-it": [sub, dir_blob([link_entry("a", victim_dir), dir_entry("a", sub_digest)])],
        "unknown-kind": [dir_blob([{"name": "x", "kind": "fifo", "digest": str(f), "mode": 0o644}])],
        "file-without-digest": [dir_blob([{"name": "x", "kind": "file", "mode": 0o644}])],
        "symlink-with-digest": [dir_blob([{**link_entry("x", "y"), "digest": str(f)}])],
        "symlink-empty-target": [dir_blob([link_entry("x", "")])],
        "symlink-nul-target": [dir_blob([link_entry("x", "a\0b")])],
        "mode-too-large": [dir_blob([file_entry("x", f, 0o17777)])],
        "mode-not-int": [dir_blob([file_entry("x", f, "0644")])],
        "mode-bool": [dir_blob([file_entry("x", f, True)])],
        "bad-digest": [dir_blob([file_entry("x", "zz" * 32 + "/3")])],
        "huge-size": [dir_blob([file_entry("x", f.hash + "/" + "9" * 30)])],
        "version-2": [dir_blob([file_entry("x", f)], v=2)],
        "not-a-dict": [b"[1, 2, 3]"],
        "infinity-mode": [b'{"v":1,"entries":[{"name":"x","kind":"file","digest":"' + str(f).encode()
                          + b'","mode":Infinity}]}'],
        "deep-json": [b'{"v":1,"entries":' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    }
    return trees


def deep_chain(depth: int) -> list[bytes]:
    """A tree `depth` directories deep (d/d/d/...), blobs leaf first, root last."""
    blobs = [dir_blob([])]
    for _ in range(depth):
        blobs.append(dir_blob([dir_entry("d", digest_bytes(blobs[-1]))]))
    return blobs


def wide_dag(levels: int) -> list[bytes]:
    """Each directory holds two entries naming the same child: 2**levels paths from few blobs."""
    blobs = [dir_blob([file_entry("f", CONTENT_DIGEST)])]
    for _ in range(levels):
        child = digest_bytes(blobs[-1])
        blobs.append(dir_blob([dir_entry("a", child), dir_entry("b", child)]))
    return blobs


def malformed_results(good: dict) -> dict[str, bytes]:
    """name -> action-cache entry bytes, derived from a good entry (the result object)."""
    out = good["outputs"]
    return {
        "empty-outputs": b'{"outputs":[],"exit_code":0}',
        "infinity-exit-code": b'{"exit_code": Infinity, "outputs": ' + json.dumps(out).encode() + b"}",
        "nan-exit-code": b'{"exit_code": NaN, "outputs": ' + json.dumps(out).encode() + b"}",
        "deep-list": b"[" * 100_000 + b"]" * 100_000,
        "not-a-dict": b'["outputs", 0]',
        "huge-int": b'{"exit_code": 1' + b"0" * 5000 + b', "outputs": ' + json.dumps(out).encode() + b"}",
        "exit-code-string": json.dumps({**good, "exit_code": "0"}).encode(),
        "unknown-kind": json.dumps({**good, "outputs": [{**out[0], "kind": "socket"}]}).encode(),
        "output-dotdot": json.dumps({**good, "outputs": [{**out[0], "path": "../../etc/x"}]}).encode(),
        "other-output-path": json.dumps({**good, "outputs": [{**out[0], "path": out[0]["path"] + "2"}]}).encode(),
        "outputs-not-list": json.dumps({**good, "outputs": {"a": 1}}).encode(),
        "truncated": json.dumps(good).encode()[:-7],
        "too-large": json.dumps({**good, "metadata": {"pad": "x" * (2 << 20)}}).encode(),
    }


MALFORMED_NAMES = tuple(malformed_results({"outputs": [{"path": "p", "kind": "file", "digest": "d"}], "exit_code": 0}))
SCHEMA_VALID = ("empty-outputs", "other-output-path")  # well-formed: the executor checks them against the action
