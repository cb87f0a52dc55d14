"""The library files a DAG job imports: its code dependencies, the same for Snakemake and DVC.

Computed from the static import graph (``ast``, no imports executed, no torch):

- the job's script, and every ``backdoor`` module it imports, transitively, with their parent
  packages (importing ``backdoor.data.tensors`` runs ``backdoor/data/__init__.py``);
- a function the script calls in a library module (``steps.purify``) counts with the imports of
  that function's body and of the module functions it uses, so a step's lazy imports are its own;
  any other module counts with every import in it, at any depth;
- registry lookups: a params value ``{"type": T, ...}`` under key ``K`` (``defense``, ``attack``)
  adds the module registered for ``T`` in package ``backdoor/<K>s/``, and so does any other value of
  that dict naming a registered type there (benign's ``probe: badnets``).

``job_files`` is the one definition; Snakemake hashes it into a rule param (``fingerprint``), the
generated dvc.yaml lists it as stage deps.
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache
from pathlib import Path

PACKAGE = "backdoor"
SRC = Path(__file__).resolve().parents[1]  # the src/ folder holding this checkout's package


@lru_cache(maxsize=None)
def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file of library module ``name`` (a package's ``__init__.py``), or None."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _parse(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _tree(path: Path) -> ast.Module:
    st = path.stat()
    return _parse(path, st.st_mtime_ns, st.st_size)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(nodes, module: str, is_package: bool, src: Path) -> set[str]:
    """Library modules imported by the import statements among ``nodes`` (walked recursively)."""
    found: set[str] = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Import):
                found.update(a.name for a in n.names if a.name.split(".")[0] == PACKAGE)
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    parts = module.split(".")
                    base_parts = parts if is_package else parts[:-1]
                    base_parts = base_parts[:len(base_parts) - (n.level - 1)]
                    base = ".".join(base_parts + ([n.module] if n.module else []))
                else:
                    base = n.module or ""
                if base.split(".")[0] != PACKAGE:
                    continue
                found.add(base)
                for alias in n.names:  # `from pkg import submodule`
                    if module_file(f"{base}.{alias.name}", src):
                        found.add(f"{base}.{alias.name}")
    return {m for m in found if module_file(m, src)}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(name: str, src: Path = SRC) -> set[str]:
    """``name``, its parent packages and everything they import, at any depth in their files."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        for m in _with_parents(mod):
            if m in seen or not module_file(m, src):
                continue
            seen.add(m)
            todo.extend(_edges(m, src))
    return seen


def _edges(name: str, src: Path) -> frozenset[str]:
    path = module_file(name, src)
    st = path.stat()
    return _edges_of(name, path, st.st_mtime_ns, st.st_size, src)


@lru_cache(maxsize=None)
def _edges_of(name: str, path: Path, mtime_ns: int, size: int, src: Path) -> frozenset[str]:
    return frozenset(_imports([_tree(path)], name, _is_package(path), src))


def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    defs: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        defs[n.id] = node
    return defs


def function_closure(module: str, names: set[str], src: Path = SRC) -> set[str]:
    """Modules needed to call ``module.<name>`` for each of ``names``: the module's own top-level
    imports plus the imports in those definitions and in the module definitions they use."""
    path = module_file(module, src)
    tree = _tree(path)
    defs = _top_level(tree)
    if not names <= defs.keys():  # not a plain definition (a re-export, a submodule): all of it
        return module_closure(module, src)
    is_pkg = _is_package(path)
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    mods = set(_imports([n for n in top if isinstance(n, (ast.Import, ast.ImportFrom))], module, is_pkg, src))
    # top-level statements run on import: the definitions they use count too
    todo = list(names) + [n.id for s in top if not isinstance(s, (ast.Import, ast.ImportFrom))
                          for n in ast.walk(s) if isinstance(n, ast.Name) and n.id in defs]
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        node = defs[name]
        mods |= _imports([node], module, is_pkg, src)
        todo.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in defs)
    closure = module_closure(module.rsplit(".", 1)[0], src) if "." in module else set()
    closure.add(module)
    for m in mods:
        closure |= module_closure(m, src)
    return closure


def script_closure(script: Path, src: Path = SRC) -> set[str]:
    """Library modules a script imports, following the functions it calls in them."""
    tree = _tree(script)
    bound: dict[str, str] = {}  # local name -> library module
    direct: dict[str, set[str]] = {}  # module -> functions imported by name
    closure: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE:
                    if a.asname:
                        bound[a.asname] = a.name
                    else:
                        closure |= module_closure(a.name, src)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            for a in node.names:
                if module_file(f"{node.module}.{a.name}", src):
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
                else:
                    direct.setdefault(node.module, set()).add(a.name)
    used: dict[str, set[str]] = {m: set() for m in bound.values()}
    whole: set[str] = set()
    attribute_values = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            used[bound[node.value.id]].add(node.attr)
            attribute_values.add(id(node.value))
    for node in ast.walk(tree):  # a module used otherwise than `module.name` (passed on, …): all of it
        if isinstance(node, ast.Name) and node.id in bound and id(node) not in attribute_values:
            if isinstance(node.ctx, ast.Load):
                whole.add(bound[node.id])
    for module, names in {**used, **direct}.items():
        closure |= module_closure(module, src) if module in whole or not names else function_closure(module, names, src)
    return closure


def registry(package: str, src: Path = SRC) -> dict[str, str]:
    """``type name -> module`` for ``package`` (``backdoor.defenses``), read from its declarations in
    ``backdoor.schema.<kind>`` — calls like ``@defense("fip", "backdoor.defenses.fip")`` — and from
    dict literals of the package's ``__init__.py`` whose values name its modules."""
    found: dict[str, str] = {}
    for name in (package, f"{PACKAGE}.schema.{package.rsplit('.', 1)[-1]}"):
        path = module_file(name, src)
        if path is not None:
            st = path.stat()
            found.update(_registry(package, path, st.st_mtime_ns, st.st_size, src))
    return found


@lru_cache(maxsize=None)
def _registry(package: str, path: Path, mtime_ns: int, size: int, src: Path) -> dict[str, str]:
    found: dict[str, str] = {}

    def add(k, v):
        if (isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Constant)
                and isinstance(v.value, str) and v.value.startswith(package + ".")):
            module = v.value.split(":")[0]
            if module_file(module, src):
                found[k.value] = module

    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                add(k, v)
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            add(node.args[0], node.args[1])
    return found


def typed_modules(values: dict, src: Path = SRC) -> set[str]:
    """Modules a job loads through a registry, from the ``type`` of each params section it reads."""
    mods: set[str] = set()
    if isinstance(values.get("arch"), str):  # purify: the checkpoint's architecture (``models.<id>.type``)
        mods |= typed_modules({"model": {"type": values["arch"]}}, src)
    for key, section in values.items():
        if not isinstance(section, dict) or "type" not in section:
            continue
        reg = registry(f"{PACKAGE}.{key}s", src)
        for value in section.values():
            if isinstance(value, str) and value in reg:
                mods.add(reg[value])
    return mods


_JOB_FILES: dict[tuple, tuple[list[str], list[tuple]]] = {}


def _stats(root: Path, files: list[str]) -> list[tuple]:
    base = str(root)
    out = []
    for f in files:
        st = os.stat(os.path.join(base, f))
        out.append((st.st_mtime_ns, st.st_size))
    return out


def job_files(script: str | Path, values: dict, root: str | Path) -> list[str]:
    """The script and the library files a job imports, as sorted paths relative to ``root``.

    ``values``: the params the job reads (``params.step_values``), for registry lookups."""
    root = Path(root).resolve()
    src = root / "src"
    script = Path(os.path.normpath(os.path.join(root, script)))
    typed = typed_modules(values, src)
    key = (root, script, frozenset(typed))
    if key in _JOB_FILES:  # the same files, unchanged since: the same closure (only they can import more)
        files, stats = _JOB_FILES[key]
        if _stats(root, files) == stats:
            return list(files)
    mods = script_closure(script, src)
    for m in typed:
        mods |= module_closure(m, src)
    found = {script} | {module_file(m, src) for m in mods}
    files = sorted(str(p.relative_to(root)) for p in found)
    _JOB_FILES[key] = (files, _stats(root, files))
    return list(files)


@lru_cache(maxsize=None)
def _md5(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.md5(fh.read()).hexdigest()


def fingerprint(files, root: str | Path) -> dict[str, str]:
    """``path -> md5`` of each file (the hash DVC records for it in dvc.lock)."""
    base = str(root)
    out = {}
    for f in files:
        path = os.path.join(base, f)
        st = os.stat(path)
        out[f] = _md5(path, st.st_mtime_ns, st.st_size)
    return out
