"""The declaration engine: typed, defaulted dataclasses that validate a YAML mapping.

A setting is declared once, as a field of a frozen dataclass::

    lr: float = param(0.01, "learning rate", gt=0)

The annotation is its type, ``param`` gives its default, its one-line meaning and its range. The
same declaration validates params.yaml (``Spec.build``) and supplies the defaults of the keys it
omits. Types: ``bool`` (only true/false), ``int``, ``float`` (ints accepted), ``str`` (``choices``,
``pattern``), ``X | None``, ``list[X]``, ``X | list[X]``, ``dict[str, X]`` and nested ``Spec``\\ s.
No torch here: the Snakefile imports this to check params.yaml before any job.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar

REQUIRED = MISSING  # param(REQUIRED, ...): the key must be given


class ParamsError(ValueError):
    """Invalid settings; ``problems`` lists every one (key path, message, line when known)."""

    def __init__(self, problems: list[Problem], source: str = "params.yaml"):
        self.problems = problems
        lines = "\n  - ".join(p.render() for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  - {lines}")


@dataclass
class Problem:
    key: str  # dotted key path, e.g. defenses.ft.weight_decay
    message: str
    line: int | None = None

    def render(self) -> str:
        return (f"line {self.line}: " if self.line else "") + f"{self.key}: {self.message}"


def param(default: Any = REQUIRED, doc: str = "", *, gt=None, ge=None, lt=None, le=None,
          choices: tuple | None = None, pattern: str | None = None, min_items: int | None = None,
          defaults_from: str | None = None) -> Any:
    """Declare a setting: its default, one-line meaning and allowed values (ranges apply to list
    items too). ``defaults_from`` (for ``dict[str, Spec]`` sections) names the section whose given
    keys override the declared defaults of every entry (``attack_defaults`` for ``attacks``)."""
    meta = {"doc": doc, "gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices, "pattern": pattern,
            "min_items": min_items, "defaults_from": defaults_from}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict)) or (isinstance(default, type) and issubclass(default, Spec)):
        factory = default if isinstance(default, type) else (lambda d=default: copy.deepcopy(d))
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def spec(cls):
    """Make ``cls`` a declaration: a frozen, keyword-only dataclass (equality is the Mapping's: equal
    settings; no generated __eq__, which keeps the import, and so the Snakefile's parse, faster)."""
    return dataclass(frozen=True, kw_only=True, eq=False)(cls)


@spec
class Spec(Mapping):
    """Base of every declaration. Read settings as attributes (``p.lr``); the read-only mapping view
    (``p["lr"]``, ``dict(p)``, with ``type`` for registered types) serves code written for dicts."""

    kind: ClassVar[str | None] = None  # the registered type name (``type:`` in params.yaml)
    REGISTRY: ClassVar[dict[str, type] | None] = None  # on a family's base: its types by name
    ALTERNATIVES: ClassVar[tuple[tuple[str, str], ...]] = ()  # give at most one of each pair
    CHECK_PARTIAL: ClassVar[bool] = False  # run check() on the valid fields even when others fail

    # -- building and checking ------------------------------------------------------------------
    @classmethod
    def build(cls, raw: Any, where: str, base: Mapping[str, tuple[Any, str]] | None = None
              ) -> tuple[Spec | None, list[Problem]]:
        """Validate the mapping ``raw`` found at key path ``where``; ``base`` maps a field to a valid
        (value, key path) that replaces its declared default. Returns (instance or None, problems)."""
        if not isinstance(raw, Mapping):
            return None, [Problem(where, f"expected a mapping of settings, got {_shown(raw)}")]
        fields = declared(cls)
        problems: list[Problem] = []
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        invalid: set[str] = set()  # fields that failed
        broken: dict[str, set] = {}  # dict fields: ids whose entries failed
        for key in raw:
            if key == "type" and cls.kind is not None:
                continue  # checked where the type is looked up
            if key not in fields:
                problems.append(Problem(_join(where, key), unknown_key(key, list(fields), cls.describe(where))))
        for name, f in fields.items():
            path = _join(where, name)
            if name in raw:
                entry_base = _given(raw, values, f.metadata.get("defaults_from"))
                value, errs = check_value(raw[name], hint_of(cls, name), f.metadata, path, entry_base)
                problems += errs
                if not errs:
                    values[name], origin[name] = value, path
                elif typing.get_origin(hint_of(cls, name)) is dict and isinstance(raw[name], Mapping):
                    values[name], broken[name] = value, set(raw[name]) - set(value)  # the valid entries
                else:
                    invalid.add(name)
            elif base is not None and name in base:
                values[name], origin[name] = base[name]
            elif f.default is MISSING and f.default_factory is MISSING:
                problems.append(Problem(path, "this key is required" + _doc(f)))
                invalid.add(name)
        for a, b in cls.ALTERNATIVES:
            if a in raw and b in raw and raw[a] is not None and raw[b] is not None:
                problems.append(Problem(_join(where, b), f"give either {a} or {b}, not both"))
            elif a in values and b not in values:
                values[b] = None  # giving one of a pair replaces the other's default
            elif b in values and a not in values:
                values[a] = None
        if problems and not cls.CHECK_PARTIAL:
            return None, problems
        for name in invalid:  # CHECK_PARTIAL: placeholders that check() must skip (``valid``)
            values[name] = None if default_of(cls, name) is REQUIRED else default_of(cls, name)
        inst = cls(**values)
        object.__setattr__(inst, "_origin", origin)
        object.__setattr__(inst, "_where", where)
        object.__setattr__(inst, "_invalid", invalid)
        object.__setattr__(inst, "_broken", broken)
        for fld, message in inst.check():
            problem = Problem(inst.origin(fld), message)
            if problem not in problems:
                problems.append(problem)
        return (None if problems else inst), problems

    def check(self) -> list[tuple[str, str]]:
        """Cross-field checks within this entry: (field, message) pairs. Override where needed."""
        return []

    def valid(self, name: str) -> bool:
        """False for a field that failed its own checks (only seen by check() when CHECK_PARTIAL)."""
        return name not in getattr(self, "_invalid", ())

    def broken_ids(self, name: str) -> set:
        """Ids of a ``dict[str, Spec]`` field whose entries failed (left out of it)."""
        return getattr(self, "_broken", {}).get(name, set())

    def check_data(self, data) -> list[tuple[str, str]]:
        """Checks against a dataset (``num_classes``, ``channels``, ``size``). Override where needed."""
        return []

    @classmethod
    def of(cls, params: Mapping | None = None, **overrides) -> Spec:
        """``params`` as this declaration: an instance is returned as it is, a mapping (a section of
        params.yaml, or a partial dict in code) is validated and completed with the defaults."""
        if isinstance(params, cls) and not overrides:
            return params
        raw = {**dict(params or {}), **overrides}
        if cls.kind is not None and raw.get("type", cls.kind) != cls.kind:
            raise ParamsError([Problem("type", f"{raw['type']!r} given to the {cls.kind!r} declaration")],
                              source=f"settings of {cls.kind}")
        inst, problems = cls.build(raw, cls.kind or cls.__name__.lower())
        if problems:
            raise ParamsError(problems, source=f"settings of {cls.kind or cls.__name__}")
        return inst

    @classmethod
    def describe(cls, where: str = "") -> str:
        if cls.kind:
            return f"{'an' if cls.family()[0] in 'aeiou' else 'a'} {cls.family()} of type {cls.kind!r}"
        return f"`{where}`" if where else "the top level"

    @classmethod
    def family(cls) -> str:
        return "setting"

    def origin(self, name: str) -> str:
        """The key path a field's value came from (the entry, a defaults section, or the declaration)."""
        return getattr(self, "_origin", {}).get(name) or _join(getattr(self, "_where", ""), name)

    # -- the plain view ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain values (JSON-able), with ``type`` first for registered types."""
        out = {"type": self.kind} if self.kind is not None else {}
        for name in declared(type(self)):
            value = getattr(self, name)
            out[name] = _plain(value)
        return out

    def __getitem__(self, key: str) -> Any:
        if key == "type" and self.kind is not None:
            return self.kind
        if key in declared(type(self)):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter((["type"] if self.kind is not None else []) + list(declared(type(self))))

    def __len__(self) -> int:
        return len(declared(type(self))) + (self.kind is not None)


# -- declarations and type hints -------------------------------------------------------------------

_FIELDS: dict[type, dict[str, dataclasses.Field]] = {}
_HINTS: dict[type, dict[str, Any]] = {}


def declared(cls: type) -> dict[str, dataclasses.Field]:
    """The declared settings of ``cls`` in declaration order."""
    if cls not in _FIELDS:
        _FIELDS[cls] = {f.name: f for f in dataclasses.fields(cls)}
    return _FIELDS[cls]


def hint_of(cls: type, name: str) -> Any:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls][name]


def default_of(cls: type, name: str) -> Any:
    f = declared(cls)[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return REQUIRED


def _given(raw: Mapping, values: Mapping, section: str | None) -> dict | None:
    """The keys the user gave in ``section`` (already validated), as (value, key path) pairs."""
    if not section or not isinstance(values.get(section), Spec) or not isinstance(raw.get(section), Mapping):
        return None
    built = values[section]
    return {k: (getattr(built, k), built.origin(k)) for k in raw[section] if k in declared(type(built))}


def _doc(f: dataclasses.Field) -> str:
    return f" ({f.metadata['doc']})" if f.metadata.get("doc") else ""


def _join(where: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _shown(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})" if not isinstance(value, (dict, list)) else kind


def unknown_key(key: Any, known: list[str], owner: str) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key for {owner}{hint}; known keys: {', '.join(sorted(known)) or '(none)'}"


# -- values ------------------------------------------------------------------------------------------

_FLOAT_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BOOL_STRINGS = {"true", "false", "yes", "no", "on", "off"}


def _kind_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_kind_name(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, f"a mapping ({getattr(hint, '__name__', hint)})")


def check_value(value: Any, hint: Any, meta: Mapping, path: str, base: Mapping | None = None
                ) -> tuple[Any, list[Problem]]:
    """Validate ``value`` against the type ``hint`` and the range in ``meta``; returns (value, problems)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None, []
            return None, [Problem(path, "null is not allowed here: give a value, or remove the key to take "
                                        "the default")]
        listy = [o for o in options if typing.get_origin(o) is list]
        scalar = [o for o in options if o is not type(None) and typing.get_origin(o) is not list]
        if isinstance(value, list) and listy:
            return check_value(value, listy[0], meta, path)
        if len(scalar) == 1:
            got, problems = check_value(value, scalar[0], meta, path)
            if problems and listy and not isinstance(value, list) and problems[0].message.startswith("expected"):
                problems = [Problem(path, f"expected {_kind_name(hint)}, got {_shown(value)}")]
            return got, problems
        return value, [Problem(path, f"expected {_kind_name(hint)}, got {_shown(value)}")]
    if value is None:
        return None, [Problem(path, "null is not allowed here: give a value, or remove the key to take the "
                                    "default")]
    if origin is list:
        if not isinstance(value, list):
            return value, [Problem(path, f"expected {_kind_name(hint)}, got {_shown(value)}")]
        item_hint = typing.get_args(hint)[0]
        out, problems = [], []
        if meta.get("min_items") and len(value) < meta["min_items"]:
            problems.append(Problem(path, f"needs at least {meta['min_items']} entr"
                                          f"{'y' if meta['min_items'] == 1 else 'ies'}"))
        for i, item in enumerate(value):
            got, errs = check_value(item, item_hint, meta, _join(path, i))
            out.append(got)
            problems += errs
        return out, problems
    if origin is dict:
        return _check_dict(value, typing.get_args(hint)[1], path, base)
    if isinstance(hint, type) and issubclass(hint, Spec):
        return hint.build(value, path)
    return _check_scalar(value, hint, meta, path)


def _check_dict(value: Any, item: type, path: str, base: Mapping | None) -> tuple[Any, list[Problem]]:
    """``dict[str, Spec]``: ids → entries; for a family base, each entry's ``type`` (default: its id)
    picks the declaration."""
    if not isinstance(value, Mapping):
        return value, [Problem(path, f"expected a mapping of ids to settings, got {_shown(value)}")]
    out, problems = {}, []
    for key, entry in value.items():
        where = _join(path, key)
        if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9_]+", key):
            problems.append(Problem(where, "ids are lower-case letters, digits and _"))
            continue
        cls = item
        if item.REGISTRY is not None and item.kind is None:
            kind = entry.get("type", key) if isinstance(entry, Mapping) else key
            if kind not in item.REGISTRY:
                close = difflib.get_close_matches(str(kind), list(item.REGISTRY), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(Problem(_join(where, "type"), f"{kind!r} is not a registered {item.family()} "
                                        f"type{hint}; known: {', '.join(sorted(item.REGISTRY))}"))
                continue
            cls = item.REGISTRY[kind]
        got, errs = cls.build(entry, where, base)
        problems += errs
        if not errs:
            out[key] = got
    return out, problems


def _check_scalar(value: Any, hint: type, meta: Mapping, path: str) -> tuple[Any, list[Problem]]:
    fail = lambda msg: (value, [Problem(path, msg)])  # noqa: E731
    if hint is bool:
        if isinstance(value, bool):
            return value, []
        if isinstance(value, str) and value.lower() in _BOOL_STRINGS:
            return fail(f"{value!r} is a string, not a boolean: write true or false without quotes")
        return fail(f"expected true or false, got {_shown(value)}")
    if hint in (int, float):
        if isinstance(value, str) and _FLOAT_STRING.match(value.strip()):
            if hint is float and "e" in value.lower() and "." not in value.split("e")[0].split("E")[0]:
                return fail(f"{value!r} is a string, expected a number (PyYAML reads 5e-4 as a string: "
                            "write it with a dot, 5.0e-4)")
            return fail(f"{value!r} is a string, expected {_kind_name(hint)}: remove the quotes")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return fail(f"expected {_kind_name(hint)}, got {_shown(value)}")
        if hint is int and not isinstance(value, int):
            return fail(f"expected an integer, got {_shown(value)}")
        value = float(value) if hint is float else value
        for op, bound, ok in (("gt", meta.get("gt"), lambda v, b: v > b), ("ge", meta.get("ge"), lambda v, b: v >= b),
                              ("lt", meta.get("lt"), lambda v, b: v < b), ("le", meta.get("le"), lambda v, b: v <= b)):
            if bound is not None and not ok(value, bound):
                return fail(f"{value!r} is out of range: {_range(meta)}")
        return value, []
    if hint is str:
        if not isinstance(value, str):
            return fail(f"expected a string, got {_shown(value)}")
        if meta.get("choices") and value not in meta["choices"]:
            close = difflib.get_close_matches(value, list(meta["choices"]), n=1, cutoff=0.6)
            hint_ = f" (did you mean {close[0]!r}?)" if close else ""
            return fail(f"{value!r} is not allowed{hint_}; allowed values: {', '.join(map(str, meta['choices']))}")
        if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
            return fail(f"{value!r} is not allowed: {meta.get('doc') or 'expected ' + meta['pattern']}")
        return value, []
    raise TypeError(f"{path}: unsupported declared type {hint!r}")


def _range(meta: Mapping) -> str:
    parts = []
    for op, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        if meta.get(op) is not None:
            parts.append(f"{sym} {meta[op]}")
    return "must be " + " and ".join(parts)
