"""Layers of the package (issue 22): the import-linter contracts in pyproject.toml, and an import graph of our
own, read from the source with ``ast`` so that imports inside functions count, which must have no cycle
between packages and no import of another package's private names.

Known violations are listed once: the layer exceptions as ``ignore_imports`` of the layers contract in
pyproject.toml (read here too), the private names in :data:`PRIVATE_IMPORTS_ALLOWED`. Every entry must still
be a real import, so the lists only shrink as the imports are fixed. The cycle check counts every import, listed
or not.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bayeshlm"

# (importing module, module imported from, private name) still imported across packages, with the file's owner
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str, str]] = set()

# (module, private attribute) still used on objects of another package
PRIVATE_ATTRIBUTES_ALLOWED: set[tuple[str, str]] = set()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def package_of(module: str) -> str:
    """The package a module belongs to: ``bayeshlm.<first part>`` (top-level modules are their own package);
    the root ``bayeshlm`` is a package of its own."""
    return ".".join(module.split(".")[:2])


def imports_in_source(path: Path, root: Path = ROOT) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, imported name or None, line) for every bayeshlm import in one file, at any
    depth (module level, inside functions, under TYPE_CHECKING), plus ``module._name`` uses of a module bound by
    an import (reported as the name imported from that module)."""
    importer = _module_name(path, root)
    base = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bayeshlm":
                    found.append((importer, alias.name, None, node.lineno))
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            parts = base[:len(base) - node.level + 1] if node.level else []
            source = ".".join(parts + ([node.module] if node.module else []))
            if source.split(".")[0] != "bayeshlm":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if _is_module(submodule, root):
                    found.append((importer, submodule, None, node.lineno))
                    module_aliases[alias.asname or alias.name] = submodule
                else:
                    found.append((importer, source, alias.name, node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                and _is_private(node.attr)):
            found.append((importer, module_aliases[node.value.id], node.attr, node.lineno))
    return found


ALL_IMPORTS = [edge for path in sorted(PACKAGE.rglob("*.py")) for edge in imports_in_source(path)]


def private_attributes_taken(root: Path = ROOT) -> set[tuple[str, str]]:
    """(module, name) for each ``obj._name`` (obj not self or cls) in a package where ``_name`` is not defined
    (no def, class or assignment of it) but another package defines it: a private method or attribute used
    across packages. By name only, so a private name defined in both packages is not seen."""
    defined, used = {}, []
    for path in sorted((root / "bayeshlm").rglob("*.py")):
        module = _module_name(path, root)
        package = package_of(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
                names = [node.id if isinstance(node, ast.Name) else node.attr]
            else:
                names = []
                if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                    used.append((module, package, node.attr))
            for name in names:
                defined.setdefault(name, set()).add(package)
    return {(module, name) for module, package, name in used
            if name in defined and package not in defined[name]}


def _pattern(expression: str) -> re.Pattern:
    """import-linter's module expression: ``*`` one name, ``**`` one or more names."""
    parts = [r"[^.]+(\.[^.]+)*" if p == "**" else "[^.]+" if p == "*" else re.escape(p) for p in expression.split(".")]
    return re.compile(r"\.".join(parts) + r"\Z")


def _layer_exceptions() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return layers.get("ignore_imports", [])


def _matches(expression: str, importer: str, imported: str) -> bool:
    source, target = (part.strip() for part in expression.split("->"))
    return bool(_pattern(source).match(importer) and _pattern(target).match(imported))


def package_graph(exceptions: list[str]) -> dict[str, set[str]]:
    """Package -> packages it imports from, leaving out the imports matched by ``exceptions``."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _, _ in ALL_IMPORTS:
        if package_of(importer) != package_of(imported) and not any(_matches(e, importer, imported)
                                                                     for e in exceptions):
            graph.setdefault(package_of(importer), set()).add(package_of(imported))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_linter_contracts_are_kept():
    """``lint-imports`` (import-linter's command, installed beside this interpreter), which reads pyproject.toml."""
    command = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(command), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_cycle_between_packages_counting_imports_inside_functions():
    """The whole graph, the layer exceptions included: an import listed in ``ignore_imports`` still counts."""
    assert cycles(package_graph([])) == []


def test_each_listed_layer_exception_is_still_an_import():
    stale = [e for e in _layer_exceptions() if not any(_matches(e, i, m) for i, m, _, _ in ALL_IMPORTS)]
    assert stale == [], "fixed: remove these from pyproject.toml's ignore_imports"


def test_no_private_name_is_imported_from_another_package():
    private = {(i, m, n) for i, m, n, _ in ALL_IMPORTS
               if package_of(i) != package_of(m) and (n is not None and _is_private(n)
                                                      or any(_is_private(p) for p in m.split(".")))}
    assert private - PRIVATE_IMPORTS_ALLOWED == set()
    assert PRIVATE_IMPORTS_ALLOWED - private == set(), "fixed: remove these from PRIVATE_IMPORTS_ALLOWED"


def test_no_private_attribute_is_taken_from_another_package():
    taken = private_attributes_taken()
    assert taken - PRIVATE_ATTRIBUTES_ALLOWED == set()
    assert PRIVATE_ATTRIBUTES_ALLOWED - taken == set(), "fixed: remove these from PRIVATE_ATTRIBUTES_ALLOWED"


def test_private_attribute_checker(tmp_path):
    sources = {
        "bayeshlm/results/base.py": "class Fit:\n    def _factor_name(self):\n        self._gamma = 1\n",
        "bayeshlm/plots/a.py": "def f(fit):\n    return fit._factor_name(), fit._gamma\n",
        "bayeshlm/plots/b.py": "def g(x):\n    x._own = 1\n    return x._own, x._unknown, type(x).__name__\n",
        "bayeshlm/results/c.py": "def h(fit):\n    return fit._gamma\n",
    }
    for where, source in sources.items():
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / where).write_text(source)
    assert private_attributes_taken(tmp_path) == {("bayeshlm.plots.a", "_factor_name"), ("bayeshlm.plots.a", "_gamma")}


# The checker itself, on small sources: each probe must be found (or, for the allowed forms, not found).
@pytest.mark.parametrize(("source", "where", "expected"), [
    ("from ..results.base import _data_differences\n", "bayeshlm/report/x.py",
     ("bayeshlm.results.base", "_data_differences")),
    ("def f():\n    from ...bayes.marginal import _helper\n", "bayeshlm/meta/sub/x.py",
     ("bayeshlm.bayes.marginal", "_helper")),
    ("from ..results import hlm_statistics as hlm\nhlm._same_name_stem('a', 'b')\n", "bayeshlm/design/x.py",
     ("bayeshlm.results.hlm_statistics", "_same_name_stem")),
    ("import bayeshlm.results.base as b\nb._private\n", "bayeshlm/design/x.py", ("bayeshlm.results.base", "_private")),
    ("from .. import __version__\n", "bayeshlm/results/x.py", ("bayeshlm", "__version__")),
])
def test_checker_reads_imports_at_any_depth(tmp_path, source, where, expected):
    for module in ("bayeshlm/results/hlm_statistics.py", where):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    path = tmp_path / where
    path.write_text(source)
    assert expected in {(m, n) for _, m, n, _ in imports_in_source(path, tmp_path)}


def test_cycle_finder():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []
    assert _matches("bayeshlm.*.result -> bayeshlm.results.**", "bayeshlm.bayes.result", "bayeshlm.results.base")
    assert not _matches("bayeshlm.*.result -> bayeshlm.results.**", "bayeshlm.bayes.result", "bayeshlm.results")
