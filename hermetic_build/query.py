"""`hb query` expressions over the target graph, and DOT output for `hb graph`."""

from __future__ import annotations

import re

from .analysis import AnalysisResult, TargetSummary
from .errors import UsageError
from .label import Label

_TOKEN_RE = re.compile(r"\s*(?:(?P<word>[A-Za-z_][A-Za-z0-9_]*)\s*\(|(?P<punct>[(),])|(?P<arg>[^\s(),]+))")


def _parse(text: str):
    """Parse into nested tuples: ("call", name, [args]) or ("word", text)."""
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise UsageError(f"cannot parse query at {text[pos:]!r}")
        if match.group("word"):
            tokens.append(("call", match.group("word")))
        elif match.group("punct"):
            tokens.append(("punct", match.group("punct")))
        else:
            tokens.append(("arg", match.group("arg")))
        pos = match.end()

    def expr(i):
        kind, value = tokens[i]
        if kind == "call":
            args, i = [], i + 1
            while True:
                arg, i = expr(i)
                args.append(arg)
                if i >= len(tokens):
                    raise UsageError(f"query {text!r}: missing ')'")
                if tokens[i] == ("punct", ")"):
                    return ("call", value, args), i + 1
                if tokens[i] != ("punct", ","):
                    raise UsageError(f"query {text!r}: expected ',' or ')'")
                i += 1
        if kind == "arg":
            return ("word", value), i + 1
        raise UsageError(f"query {text!r}: unexpected {value!r}")

    if not tokens:
        raise UsageError("empty query")
    tree, end = expr(0)
    if end != len(tokens):
        raise UsageError(f"query {text!r}: unexpected text after the expression")
    return tree


def _patterns(tree, out):
    if tree[0] == "word":
        out.append(tree[1])
    else:
        name, args = tree[1], tree[2]
        for i, arg in enumerate(args):
            if name == "kind" and i == 0 or name == "deps" and i == 1:
                continue
            _patterns(arg, out)
    return out


def run_query(session, text: str, current_package: str = "") -> list[TargetSummary]:
    tree = _parse(text)
    patterns = _patterns(tree, [])
    analysis = session.analyze(patterns, current_package)
    result = _eval(tree, analysis, session, current_package)
    return [analysis.targets[label] for label in sorted(result)]


def _eval(tree, analysis: AnalysisResult, session, pkg) -> set[Label]:
    if tree[0] == "word":
        sub = session.analyze([tree[1]], pkg)
        return set(sub.requested)
    name, args = tree[1], tree[2]
    if name == "deps":
        if len(args) not in (1, 2):
            raise UsageError("deps() takes one expression and an optional depth")
        roots = _eval(args[0], analysis, session, pkg)
        depth = int(args[1][1]) if len(args) == 2 else None
        return _reach(roots, lambda label: analysis.targets[label].deps, depth)
    if name == "rdeps":
        if len(args) not in (2, 3):
            raise UsageError("rdeps() takes a universe, an expression and an optional depth")
        universe = analysis.closure(_eval(args[0], analysis, session, pkg))
        reverse: dict[Label, list[Label]] = {label: [] for label in universe}
        for label in universe:
            for dep in analysis.targets[label].deps:
                reverse.setdefault(dep, []).append(label)
        roots = _eval(args[1], analysis, session, pkg) & set(universe)
        depth = int(args[2][1]) if len(args) == 3 else None
        return _reach(roots, lambda label: reverse.get(label, ()), depth)
    if name == "kind":
        if len(args) != 2 or args[0][0] != "word":
            raise UsageError("kind() takes a rule-name pattern and an expression")
        regex = re.compile(args[0][1])
        return {label for label in _eval(args[1], analysis, session, pkg)
                if regex.search(analysis.targets[label].rule)}
    raise UsageError(f"unknown query function {name}()", hint="supported: deps, rdeps, kind")


def _reach(roots, edges, depth):
    seen = set(roots)
    frontier = list(roots)
    level = 0
    while frontier and (depth is None or level < depth):
        level += 1
        nxt = []
        for label in frontier:
            for other in edges(label):
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
        frontier = nxt
    return seen


def to_dot(analysis: AnalysisResult, labels) -> str:
    lines = ["digraph hb {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    for label in labels:
        target = analysis.targets[label]
        lines.append(f'  "{label}" [label="{label}\\n{target.rule}"];')
    for label in labels:
        for dep in analysis.targets[label].deps:
            lines.append(f'  "{label}" -> "{dep}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
