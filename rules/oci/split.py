"""Splitting a staged conda environment into per-package layers.

Each package's layer holds the files conda-meta says it installed; each PyPI wheel's layer the files
its `.dist-info/RECORD` lists (layer name `pypi:<name>`). Packages are ordered so that the
ones others depend on (rarely changing: libraries, the interpreter) come first and the ones nothing
depends on come last. With more packages than the `max_layers` budget allows, packages under a size
threshold share a fixed number of layers, each chosen by the package's name (see _small_buckets). A final layer holds what no single package owns (conda-meta, anything written at
install time), so bumping one package changes only its own layer and the final one.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass

from blake3 import blake3

from hermetic_build.api import ActionFailed, TreeEntry, json_values_at_most, small_blob, walk_tree

FINAL_LAYER = "(environment metadata)"


@dataclass(frozen=True)
class LayerGroup:
    """What goes into one layer: packages and the paths (relative to the tree) they own."""

    name: str
    packages: tuple[str, ...]
    paths: tuple[str, ...]
    size: int


def tree_entries(store, digest) -> dict[str, TreeEntry]:
    return dict(walk_tree(store, digest))


def _dep_name(spec: str) -> str:
    return re.split(r"[\s=<>!~\[]", spec.strip(), maxsplit=1)[0]


def _ordered(records: dict[str, dict]) -> list[str]:
    """Dependencies before dependents; ties broken by name (deterministic Kahn): each step places the
    first by name of the packages whose dependencies are all placed, or, when a dependency cycle leaves
    none, the first by name of those not placed yet."""
    dependents: dict[str, list[str]] = {name: [] for name in records}
    waiting: dict[str, int] = {}
    for name, rec in records.items():
        deps = {_dep_name(d) for d in rec.get("depends", ())} & records.keys() - {name}
        waiting[name] = len(deps)
        for d in deps:
            dependents[d].append(name)
    ready = [name for name, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    unplaced = sorted(records)  # for cycles: the first not placed yet, found lazily
    next_unplaced = 0
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(records):
        if ready:
            name = heapq.heappop(ready)
        else:  # a dependency cycle: place the first by name of the rest
            while unplaced[next_unplaced] in placed:
                next_unplaced += 1
            name = unplaced[next_unplaced]
        done.append(name)
        placed.add(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0 and dependent not in placed:
                heapq.heappush(ready, dependent)
    return done


WHEEL_RECORD = re.compile(r"^(lib/python[0-9.]+/site-packages)/[^/]+\.dist-info/RECORD$")


def wheel_records(store, entries: dict[str, TreeEntry], conda_files: set[str],
                  budget: "ParseBudget | None" = None) -> dict[str, dict]:
    """conda-meta-like records ({name, depends, files}) of the wheels installed in site-packages: the
    files of the tree their RECORD lists, relative to the prefix. A .dist-info shipped inside a conda
    package (its RECORD listed in conda-meta) belongs to that package, not to a wheel."""
    import csv
    import io
    import posixpath

    budget = budget or ParseBudget(len(entries))
    out: dict[str, dict] = {}
    for path, entry in sorted(entries.items()):
        match = WHEEL_RECORD.match(path)
        if not match or entry.kind != "file" or path in conda_files:
            continue
        site = match.group(1)
        dist_info = path.rsplit("/", 1)[0]
        files = []
        data = small_blob(store, entry.digest, MAX_WHEEL_RECORD_BYTES, f"the environment's {path}")
        # a row is a list of up to 3 strings; csv ends a row at "\n" or "\r" (counted before it parses)
        budget.spend(path, 4 * (data.count(b"\n") + data.count(b"\r") + 1))
        try:
            # lines end at "\n" only, as installer's csv writer ends them: str.splitlines also ends them at
            # U+2028, U+0085 and others, so a console script named "python\u2028x" (its RECORD row
            # "../../../bin/python\u2028x,...") had layering give conda's bin/python to the wheel's layer.
            # Rows are read one at a time, and only those naming a file of the tree are kept.
            for row in csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")):
                if not row or not row[0]:
                    continue
                rel = posixpath.normpath(posixpath.join(site, row[0]))
                if rel in entries and not rel.startswith("../") and rel != "..":
                    files.append(rel)
        except csv.Error as exc:  # a field over csv's limit, a NUL byte
            raise ActionFailed(f"the environment's {path} is not a readable RECORD: {exc}") from None
        name, depends = _wheel_metadata(store, entries.get(f"{dist_info}/METADATA"), f"{dist_info}/METADATA")
        name = name or dist_info.rsplit("/", 1)[1].rsplit("-", 1)[0]
        key = pypi_key(name)
        if key in out:  # the stage installs one .dist-info per project; a tree from a cache is input
            raise ActionFailed(f"the environment's {path} and {out[key]['record']} both record the PyPI project "
                               f"{name!r}")
        out[key] = {"record": path, "name": key, "depends": ["python", *(pypi_key(d) for d in depends)],
                    "files": files}
    return out


# what layering reads whole from an environment's tree: a conda-meta record (the stage refuses a
# record past the same size), a wheel's RECORD (the stage refuses a wheel's past 32 MiB; installer
# rewrites it with a row a file), a wheel's METADATA (its header is what is used)
MAX_RECORD_BYTES = 256 << 20
MAX_WHEEL_RECORD_BYTES = 64 << 20
MAX_METADATA_BYTES = 64 << 20


class ParseBudget:
    """How many values (JSON values, RECORD fields) layering may parse out of one environment's
    records: PER_ENTRY for each entry of its tree, and BASE. A record that lists what the tree holds
    needs ~8 a file (a conda-meta record lists each file twice, the second time with 4-6 fields);
    past that, the tree is not what the stage writes, and parsing it would cost memory out of all
    proportion (a tree from a remote cache: a 32 MiB RECORD of empty rows took 1.6 GiB and 11 s, a
    32 MiB record of empty JSON lists 0.5 GiB; at the bounds on their size, 13 and 4 GiB). Counted
    on the bytes, before anything is parsed."""

    PER_ENTRY = 32
    BASE = 100_000

    def __init__(self, entries: int):
        self.left = self.limit = self.BASE + self.PER_ENTRY * entries

    def spend(self, path: str, values: int) -> None:
        self.left -= values
        if self.left < 0:
            raise ActionFailed(f"the environment's {path}: its records hold more than the {self.limit:,} values "
                               "layering reads for a tree of its size: it is not what it should be (a hostile "
                               "package, or a cache entry changed)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_key(name: str) -> str:
    """The name layering gives a PyPI project's layer set: pypi:<PEP 503 name>."""
    return f"pypi:{_normalise(name)}"


def _wheel_metadata(store, entry: TreeEntry | None, path: str) -> tuple[str, list[str]]:
    """(Name, names of its unconditional Requires-Dist) from a METADATA file's header, read as the
    stage's check of the wheel read it (zipdir.metadata_header: email's parser, up to the first blank
    line). Before, layering split the file at its first `\n\n` and took every line that
    str.splitlines made: a METADATA whose header said `Name: demo` with CRLF line ends, and whose body
    said `Name: numpy` (or a header value holding `\x0cName: numpy`), passed the stage's check and
    was layered as pypi:numpy (red team, fourteenth session)."""
    import io

    from rules.conda.zipdir import metadata_header

    if entry is None or entry.kind != "file":
        return "", []
    data = small_blob(store, entry.digest, MAX_METADATA_BYTES, f"the environment's {path}")
    headers = metadata_header(io.BytesIO(data).readline, MAX_METADATA_BYTES)
    names = (headers.get_all("Name") or []) if headers is not None else []
    if len(names) != 1:  # the stage refuses such a wheel; a tree from a cache is input
        raise ActionFailed(f"the environment's {path} has {len(names)} Name headers (a wheel's has one)")
    depends = [re.split(r"[\s;(<>=!~\[]", str(value).strip(), maxsplit=1)[0]
               for value in headers.get_all("Requires-Dist") or []
               if "extra" not in str(value).partition(";")[2]]
    return str(names[0]).strip(), depends


SMALL_BUCKETS = 16
SIZE_STEPS = tuple(1 << shift for shift in range(20, 42, 2))  # 1 MiB, 4 MiB, ... 1 TiB


def _small_buckets(order: list[str], sizes: dict[str, int], budget: int) -> tuple[list[tuple[str, ...]], list[str]]:
    """With more packages than layers: (shared layers of small packages, packages keeping their own).

    Which layer a small package shares depends only on its name (a fixed number of buckets by its
    name's BLAKE3) and the size threshold only moves in coarse steps, not on the rest of the
    environment: bumping, adding or removing one small package rewrites only its bucket's layer, and
    a CPU and a GPU environment that differ by their large CUDA packages still share these layers."""
    n_buckets = max(1, min(SMALL_BUCKETS, budget // 2))
    for step in SIZE_STEPS:
        own = [n for n in order if sizes[n] >= step]
        small = [n for n in order if sizes[n] < step]
        if len(own) + min(n_buckets, len(small)) <= budget:
            break
    else:  # unreachable while budget >= 1 (SIZE_STEPS ends beyond any package); kept for clarity
        own, small = [], list(order)
    by_bucket: dict[int, list[str]] = {}
    for name in small:  # `order` is dependency order, kept inside each bucket
        by_bucket.setdefault(int(blake3(name.encode()).hexdigest()[:8], 16) % n_buckets, []).append(name)
    return [tuple(by_bucket[i]) for i in sorted(by_bucket)], own


def env_groups(store, entries: dict[str, TreeEntry], max_layers: int) -> list[LayerGroup]:
    if max_layers < 2:
        raise ActionFailed(f"max_layers must be at least 2 (one package layer and the final one), got {max_layers}")
    records: dict[str, dict] = {}
    found_in: dict[str, str] = {}
    budget = ParseBudget(len(entries))
    for path, entry in sorted(entries.items()):
        if path.startswith("conda-meta/") and path.endswith(".json") and entry.kind == "file":
            data = small_blob(store, entry.digest, MAX_RECORD_BYTES, f"the environment's {path}")
            budget.spend(path, json_values_at_most(data))
            record = _conda_record(path, data)
            if record["name"] in found_in:
                raise ActionFailed(f"the environment's {path} and {found_in[record['name']]} both record the package "
                                   f"{record['name']!r}")
            found_in[record["name"]] = path
            records[record["name"]] = record
    conda_files = {path for record in records.values() for path in record.get("files", ())}
    records.update(wheel_records(store, entries, conda_files, budget))
    ordered = _ordered(records)
    owner: dict[str, str] = {}
    for name in ordered:  # a path two packages install belongs to the later one, as in the prefix
        for path in records[name].get("files", ()):
            if path in entries and entries[path].kind != "dir":
                owner[path] = name
    owned: dict[str, list[str]] = {name: [] for name in records}
    for path, name in owner.items():
        owned[name].append(path)
    sizes = {name: sum(entries[p].digest.size for p in paths if entries[p].digest is not None)
             for name, paths in owned.items()}
    order = [name for name in ordered if owned[name]]
    groups: list[LayerGroup] = []
    budget = max_layers - 1  # the final layer is always there
    if len(order) > budget:
        buckets, order = _small_buckets(order, sizes, budget)
        for names in buckets:
            groups.append(LayerGroup("+".join(names) if len(names) <= 4 else f"{len(names)} small packages", names,
                                     tuple(sorted(p for n in names for p in owned[n])), sum(sizes[n] for n in names)))
    for name in order:
        groups.append(LayerGroup(name, (name,), tuple(sorted(owned[name])), sizes[name]))
    parents = {p.rsplit("/", 1)[0] for p in entries if "/" in p}
    # an empty directory is owned by no file: keep it in the final layer so that it exists in the image
    rest = sorted(p for p, e in entries.items() if p not in owner and (e.kind != "dir" or p not in parents))
    groups.append(LayerGroup(FINAL_LAYER, (), tuple(rest),
                             sum(entries[p].digest.size for p in rest if entries[p].kind == "file")))
    return groups


def _conda_record(path: str, data: bytes) -> dict:
    """A conda-meta record as layering reads it (a name, lists of strings), or ActionFailed naming the
    file: the environment's tree may come from a shared cache, so its records are checked like input."""
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise ActionFailed(f"the environment's {path} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str) or not record["name"]:
        raise ActionFailed(f"the environment's {path} names no package (a JSON object with a \"name\" string)")
    for field in ("depends", "files"):
        value = record.get(field, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ActionFailed(f"the environment's {path}: {field!r} must be a list of strings")
    # what layering uses: the rest (paths_data: each file again, with its fields) is not kept
    return {"name": record["name"], "depends": record.get("depends", []), "files": record.get("files", [])}


def layer_entries(paths, entries: dict[str, TreeEntry], root: str) -> list[tuple[str, TreeEntry]]:
    """The tar entries of a layer: its paths under `root` (e.g. "opt/env") plus every parent directory."""
    root = root.strip("/")
    out: dict[str, TreeEntry] = {}
    parts = root.split("/") if root else []
    for i in range(len(parts)):
        out["/".join(parts[: i + 1])] = TreeEntry(parts[i], "dir", mode=0o755)
    for path in paths:
        pieces = path.split("/")
        for i in range(1, len(pieces)):
            parent = "/".join(pieces[:i])
            full = f"{root}/{parent}" if root else parent
            if full not in out:
                out[full] = entries[parent]
        out[f"{root}/{path}" if root else path] = entries[path]
    return sorted(out.items())
