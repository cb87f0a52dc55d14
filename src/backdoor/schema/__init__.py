"""Every setting of params.yaml, declared once: one typed, defaulted dataclass per section and per
attack, defense and model type. The declarations validate params.yaml and supply the defaults of
the keys it omits; the library consumes the resolved instances (``p.lr``).

    params = resolve(config)          # a Params; ParamsError lists every problem, with lines
    params.defenses["fip"].eta_f      # typed values, defaults filled in
    FIP.of({"iterations": 500})       # one type's settings from a partial dict (tests, benchmarks)

Torch-free: the Snakefile imports this to check params.yaml before any job runs.
``python3 -m backdoor.schema`` prints every declared setting with its default and meaning.
"""

from __future__ import annotations

from pathlib import Path

from .attacks import ATTACKS, Attack, AttackDefaults
from .core import ParamsError, Problem, Spec, declared, default_of, param, spec
from .defenses import DEFENSES, Defense, DefenseDefaults
from .models import MODELS, Model
from .source import line_of, read
from .study import Params, entry, section

__all__ = ["ATTACKS", "DEFENSES", "MODELS", "Attack", "AttackDefaults", "Defense", "DefenseDefaults", "Model",
           "Params", "ParamsError", "Problem", "Spec", "declared", "default_of", "entry", "load", "param", "resolve",
           "section", "spec"]


def resolve(config, lines: dict[str, int] | None = None, source: str = "params.yaml") -> Params:
    """The typed, defaulted ``Params`` of ``config`` (params.yaml as a dict). Raises ParamsError with
    every problem found (each with its line when ``lines`` knows it)."""
    if not isinstance(config, dict):
        raise ParamsError([Problem("(top level)", "expected a mapping of sections")], source)
    params, problems = Params.build(config, "")
    if problems:
        for p in problems:
            p.line = p.line or (line_of(p.key, lines) if lines else None)
        raise ParamsError(sorted(problems, key=lambda p: (p.line or 10**9, p.key)), source)
    return params


def load(path: str | Path = "params.yaml") -> tuple[dict, Params]:
    """Read and resolve a params file: (the plain dict, its Params); problems name their lines."""
    config, lines = read(path)
    return config, resolve(config, lines, source=str(path))
