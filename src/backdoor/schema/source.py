"""Reading params.yaml with the line of every key, so each problem can name its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .core import ParamsError, Problem

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read(path: str | Path) -> tuple[Any, dict[str, int]]:
    """The YAML document at ``path`` and {key path: line}. A syntax error, a key given twice or a
    boolean written other than true/false is a ParamsError naming the line."""
    text = Path(path).read_text()
    try:
        node = yaml.compose(text, Loader=Loader)
        data = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = " ".join(filter(None, [getattr(err, "context", None), getattr(err, "problem", None)])) or str(err)
        raise ParamsError([Problem("(YAML syntax)", what, line)], source=str(path)) from None
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    _walk(node, "", lines, problems)
    if problems:
        raise ParamsError(problems, source=str(path))
    return data, lines


def _walk(node, path: str, lines: dict[str, int], problems: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = key.value
            sub = f"{path}.{name}" if path else str(name)
            line = key.start_mark.line + 1
            if name in seen:
                problems.append(Problem(sub, f"given twice (lines {seen[name]} and {line}); YAML would silently "
                                             "keep the last one", line))
            seen[name] = line
            lines[sub] = line
            _walk(value, sub, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines[sub] = item.start_mark.line + 1
            _walk(item, sub, lines, problems)
    elif node.tag == "tag:yaml.org,2002:bool" and node.value.lower() not in ("true", "false"):
        # PyYAML (Snakemake) reads yes/no/on/off as booleans, YAML 1.2 (DVC) as strings
        problems.append(Problem(path, f"{node.value!r}: write true or false (YAML readers disagree on "
                                      f"{node.value!r})", node.start_mark.line + 1))


def line_of(key: str, lines: dict[str, int]) -> int | None:
    """The line of ``key``, else of its closest enclosing key that the file has."""
    while key:
        if key in lines:
            return lines[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return None
