"""Rules, their attribute schemas, and providers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .action import File
from .errors import did_you_mean
from .label import Label, LabelSyntaxError


class Provider:
    """Base of the frozen dataclasses a target hands to the targets that depend on it."""


@dataclass(frozen=True)
class DefaultInfo(Provider):
    """The files a target stands for: what `hb build` shows under hb-out and `srcs` consume."""

    files: tuple[File, ...] = ()


_TYPES = {
    "string": str, "int": int, "bool": bool, "string_list": list, "string_dict": dict,
    "label": str, "label_list": list, "string_list_dict": dict,
}


@dataclass(frozen=True)
class Attr:
    kind: str
    mandatory: bool = False
    default: Any = None
    allow_files: bool = False
    values: tuple = ()
    doc: str = ""

    @property
    def is_label(self) -> bool:
        return self.kind in ("label", "label_list")


class attr:  # noqa: N801 - reads like Bazel's attr module in rule definitions
    @staticmethod
    def string(default="", mandatory=False, values=(), doc=""):
        return Attr("string", mandatory, default, values=tuple(values), doc=doc)

    @staticmethod
    def int(default=0, mandatory=False, doc=""):
        return Attr("int", mandatory, default, doc=doc)

    @staticmethod
    def bool(default=False, mandatory=False, doc=""):
        return Attr("bool", mandatory, default, doc=doc)

    @staticmethod
    def string_list(default=(), mandatory=False, doc=""):
        return Attr("string_list", mandatory, tuple(default), doc=doc)

    @staticmethod
    def string_dict(default=None, mandatory=False, doc=""):
        return Attr("string_dict", mandatory, dict(default or {}), doc=doc)

    @staticmethod
    def string_list_dict(default=None, mandatory=False, doc=""):
        return Attr("string_list_dict", mandatory, dict(default or {}), doc=doc)

    @staticmethod
    def label(default=None, mandatory=False, allow_files=False, doc=""):
        return Attr("label", mandatory, default, allow_files=allow_files, doc=doc)

    @staticmethod
    def label_list(default=(), mandatory=False, allow_files=False, doc=""):
        return Attr("label_list", mandatory, tuple(default), allow_files=allow_files, doc=doc)


COMMON_ATTRS = {"name": Attr("string", mandatory=True), "tags": Attr("string_list", default=())}


@dataclass(frozen=True)
class Rule:
    name: str
    implementation: Callable
    attrs: dict[str, Attr] = field(hash=False)
    doc: str = ""
    # Optional: a function run by `hb lock` for targets of this rule (see hermetic_build.api).
    lock: Callable | None = field(default=None, hash=False)
    # Optional: verb ("push", "load") -> function run by `hb <verb> LABEL` after building the target.
    publish: dict = field(default_factory=dict, hash=False)
    # Optional: dependencies named inside a source file rather than in an attribute (a channel label
    # in an environment.yml). Called while the target graph is built with a SourceDepsContext;
    # returns {name: [label, ...]}; the rule reads them with ctx.deps(name), and query/graph show them.
    source_deps: Callable | None = field(default=None, hash=False)

    def all_attrs(self) -> dict[str, Attr]:
        return {**COMMON_ATTRS, **self.attrs}


_RULES: dict[str, Rule] = {}


class AttributeValueError(ValueError):
    """An attribute's value has the wrong type or shape (an analysis error, exit 4); a plain
    ValueError from check_attrs means the call itself is wrong (unknown or missing attribute)."""


def rule(name: str, implementation: Callable, attrs: dict[str, Attr] | None = None, doc: str = "",
         lock: Callable | None = None, publish: dict | None = None, source_deps: Callable | None = None) -> Rule:
    """Declare a rule; BUILD.hermetic files can then call `name(...)`."""
    for attr_name in attrs or {}:
        if attr_name in COMMON_ATTRS:
            raise ValueError(f"rule {name}: attribute {attr_name!r} is reserved")
    defined = Rule(name, implementation, dict(attrs or {}), doc, lock, dict(publish or {}), source_deps)
    _RULES[name] = defined
    return defined


def registered_rules() -> dict[str, Rule]:
    return dict(_RULES)


def check_attrs(rule_: Rule, raw: dict, package: str) -> dict:
    """Validate a rule call's attributes; return them normalised (labels parsed, lists as tuples).

    Raises ValueError (AttributeValueError for a bad value) with a message meant for `path:line: ...`.
    """
    schema = _schema(rule_)
    for key in raw:
        if key not in schema:
            hint = did_you_mean(key, schema)
            raise ValueError(
                f"{rule_.name}() got an unknown attribute {key!r}"
                + (f"; {hint}" if hint else f"; valid attributes: {', '.join(sorted(schema))}")
            )
    out = {}
    for key, spec in schema.items():
        value = raw.get(key)
        if value is None:
            if spec.mandatory:
                raise ValueError(f"{rule_.name}() is missing mandatory attribute {key!r}")
            out[key] = _freeze(spec.default)
            if spec.kind == "label" and spec.default is not None:
                out[key] = Label.parse(spec.default, package)
            continue
        out[key] = _normalise(rule_.name, key, spec, value, package)
    return out


_SCHEMAS: dict[int, tuple[Rule, dict[str, Attr]]] = {}


def _schema(rule_: Rule) -> dict[str, Attr]:
    """rule_.all_attrs(), made once per rule (check_attrs runs once per target)."""
    found = _SCHEMAS.get(id(rule_))
    if found is None or found[0] is not rule_:
        found = _SCHEMAS[id(rule_)] = (rule_, rule_.all_attrs())
    return found[1]


def _normalise(rule_name: str, key: str, spec: Attr, value, package: str):
    kind = spec.kind
    if kind == "int" and isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
        raise AttributeValueError(f"{_where(rule_name, key)} must be a {kind}, got {type(value).__name__} {value!r}")
    if kind == "string":
        if spec.values and value not in spec.values:
            raise AttributeValueError(f"{_where(rule_name, key)} must be one of {', '.join(map(repr, spec.values))}, "
                                      f"got {value!r}")
        return value
    if kind in ("string_list", "label_list"):
        for item in value:
            if not isinstance(item, str):
                raise AttributeValueError(f"{_where(rule_name, key)} must be a list of strings, got element {item!r}")
        if len(set(value)) != len(value):
            seen = set()
            for item in value:
                if item in seen:
                    raise AttributeValueError(f"{_where(rule_name, key)} lists {item!r} twice")
                seen.add(item)
        if kind == "string_list":
            return tuple(value)
    if kind == "string_dict":
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise AttributeValueError(f"{_where(rule_name, key)} must map strings to strings, got {k!r}: {v!r}")
    if kind == "string_list_dict":
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise AttributeValueError(f"{_where(rule_name, key)} must map strings to lists of strings, "
                                          f"got {k!r}: {v!r}")
    try:
        if kind == "label":
            return Label.parse(value, package)
        if kind == "label_list":
            return tuple(Label.parse(v, package) for v in value)
    except LabelSyntaxError as exc:
        raise AttributeValueError(f"{_where(rule_name, key)}: {exc}") from None
    return _freeze(value)


def _where(rule_name: str, key: str) -> str:
    return f"{rule_name}() attribute {key!r}"


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value
