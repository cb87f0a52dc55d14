"""Print every declared setting, or the resolved params of a file.

    python3 -m backdoor.schema                     # every type: key, type, default, range, meaning
    python3 -m backdoor.schema defenses.fip        # one type or section
    python3 -m backdoor.schema --resolved params.yaml   # params.yaml with every default filled in
"""

from __future__ import annotations

import argparse
import sys
import typing

import yaml

from . import ATTACKS, DEFENSES, MODELS, ParamsError, declared, default_of, load
from .core import hint_of
from .core import REQUIRED, _kind_name
from .study import Params


def _range(meta) -> str:
    parts = [f"{sym} {meta[op]}" for op, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
             if meta.get(op) is not None]
    if meta.get("choices"):
        parts.append(" | ".join(map(str, meta["choices"])))
    return ", ".join(parts)


def describe(cls, title: str) -> str:
    doc = cls.__doc__ or ""
    doc = "" if doc.startswith(cls.__name__ + "(") else doc.strip().splitlines()[0]  # dataclass's own
    rows = [title + (f": {doc}" if doc else "")]
    for name, f in declared(cls).items():
        hint = hint_of(cls, name)
        default = default_of(cls, name)
        shown = "(required)" if default is REQUIRED else ("(section)" if hasattr(default, "to_dict")
                                                          else yaml.safe_dump(default, default_flow_style=True,
                                                                              width=1000).strip().removesuffix("..."))
        kind = _kind_name(hint) if not isinstance(hint, type) or not hasattr(hint, "build") else "a section"
        rows.append(f"  {name:<22} {shown.strip():<22} {kind:<26} {_range(f.metadata):<16} {f.metadata.get('doc', '')}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", help="attacks, defenses, models, a type (defenses.fip) or a section")
    ap.add_argument("--resolved", metavar="PARAMS", help="print this params file with every default filled in")
    args = ap.parse_args(argv)
    if args.resolved:
        try:
            _, params = load(args.resolved)
        except ParamsError as err:
            print(err, file=sys.stderr)
            return 1
        print(yaml.safe_dump(params.to_dict(), sort_keys=False, width=110), end="")
        return 0
    families = {"attacks": ATTACKS, "defenses": DEFENSES, "models": MODELS}
    blocks = []
    for name, f in declared(Params).items():
        hint = hint_of(Params, name)
        if typing.get_origin(hint) is dict:
            for kind, cls in families[name].items():
                blocks.append((f"{name}.{kind}", cls))
        elif hasattr(hint, "build"):
            blocks.append((name, hint))
    blocks.insert(0, ("(top level)", Params))
    wanted = [(t, c) for t, c in blocks if not args.what or t == args.what or t.startswith(args.what + ".")]
    if not wanted:
        print(f"nothing declared as {args.what!r}", file=sys.stderr)
        return 1
    print("\n\n".join(describe(c, t) for t, c in wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
