"""The shape of the package: no import cycle in gate/, and the audit code stays apart from
the composition root (gate.service), so the evidence can be read without a running gate.

The graph is built from the source with `ast`, not by importing: every import counts, at
the top of a module, inside a function and under `if TYPE_CHECKING:` alike, since each
one is a dependency a reader has to hold in mind (and a cycle that only type checking
sees today becomes a runtime one the day someone moves an import).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

import gate

GATE_ROOT = Path(gate.__file__).parent


def package_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under the package directory `root`: dotted name -> (file, is_package)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a `from ... import` refers to, relative ones included."""
    if level == 0:
        return target or ""
    package = module if is_package else module.rpartition(".")[0]
    base = package.split(".")
    if level - 1 >= len(base):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    anchor = ".".join(base[: len(base) - (level - 1)])
    return f"{anchor}.{target}" if target else anchor


def module_imports(name: str, path: Path, is_package: bool, known: Iterable[str]) -> set[str]:
    """The modules of the package that `name` depends on.

    `import a.b.c` and `from a.b.c import x` run a/__init__ and a/b/__init__ first, so they
    depend on those packages too, except on the importer's own ancestors: Python has
    already started those before the importer's first line runs. Naming a package itself
    (`import a.b`, `from a.b import name`) is a dependency on it even from inside it.
    """
    known = set(known)
    own_ancestors = set(_prefixes(name)[:-1])
    found: set[str] = set()

    def depend(target: str, *, explicit: bool) -> None:
        for prefix in _prefixes(target):
            if prefix not in known:
                continue
            if (prefix == target and explicit) or prefix not in own_ancestors:
                found.add(prefix)

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                depend(alias.name, explicit=True)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:  # `from a import b` where b is a module
                    depend(base, explicit=False)
                    depend(submodule, explicit=True)
                else:  # a name defined in `base` (or `*`): base must have run
                    depend(base, explicit=True)
    found.discard(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {
        name: module_imports(name, path, is_package, modules)
        for name, (path, is_package) in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, as a closed path
    (first name repeated at the end), in a stable order."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan; the package is small enough to recurse
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(component)) for component in sorted(components)]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if target not in parents:
                    parents[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def describe(cycles: list[list[str]]) -> str:
    return "; ".join(" -> ".join(cycle) for cycle in cycles)


# -- the package -------------------------------------------------------------------------


def test_gate_has_no_import_cycle() -> None:
    graph = import_graph(GATE_ROOT)
    assert "gate.http.public" in graph and "gate.service" in graph  # it did read the package
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles in gate/: {describe(cycles)}"


def test_audit_does_not_import_the_composition_root() -> None:
    graph = import_graph(GATE_ROOT)
    audit = [name for name in graph if name == "gate.audit" or name.startswith("gate.audit.")]
    assert "gate.audit.export" in audit
    offenders = sorted(name for name in audit if "gate.service" in graph[name])
    assert not offenders, f"gate.service imported by {offenders}"


def test_claims_builds_on_the_request_checks_not_on_a_listener() -> None:
    graph = import_graph(GATE_ROOT)
    assert "gate.http.checks" in graph["gate.http.claims"]
    assert not graph["gate.http.claims"] & {"gate.http.public", "gate.http.admin"}


# -- the checker itself ------------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_finds_a_cycle_through_every_kind_of_import(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.sub import helper\n",
            "pkg/sub/__init__.py": "",
            # relative, and inside a function
            "pkg/sub/helper.py": "def f():\n    from ..b import thing\n    return thing\n",
            # only while type checking
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nthing = 1\n"
            ),
            "pkg/c.py": "import pkg.a\n",  # depends on the cycle but is not part of it
        },
    )
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.helper"}
    assert graph["pkg.sub.helper"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.sub.helper", "pkg.b", "pkg.a"]]
    assert describe(cycles) == "pkg.a -> pkg.sub.helper -> pkg.b -> pkg.a"


def test_checker_counts_a_package_init_that_runs_first(tmp_path: Path) -> None:
    # importing pkg.sub.leaf runs pkg/sub/__init__.py, which imports pkg.user: a cycle
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from pkg.user import x\n",
            "pkg/sub/leaf.py": "",
            "pkg/user.py": "import pkg.sub.leaf\nx = 1\n",
        },
    )
    assert find_cycles(import_graph(package)) == [["pkg.sub", "pkg.user", "pkg.sub"]]


def test_checker_accepts_a_package_that_re_exports_its_modules(tmp_path: Path) -> None:
    # __init__ re-exports from its modules, which import each other by absolute and
    # relative names: Python runs this fine, and so must the checker see it
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/room/__init__.py": "from pkg.room.calls import Room\n",
            "pkg/room/calls.py": "from pkg.room.keys import K\nfrom . import scripts\nRoom = 1\n",
            "pkg/room/keys.py": "K = 1\n",
            "pkg/room/scripts.py": "from .keys import K\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.room.calls"] == {"pkg.room.keys", "pkg.room.scripts"}
    assert find_cycles(graph) == []


def test_checker_sees_a_module_that_imports_its_own_package(tmp_path: Path) -> None:
    # a name taken from the package's __init__, which is still running: a real cycle
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/room/__init__.py": "from pkg.room.calls import Room\nK = 1\n",
            "pkg/room/calls.py": "from pkg.room import K\nRoom = 1\n",
        },
    )
    assert find_cycles(import_graph(package)) == [["pkg.room", "pkg.room.calls", "pkg.room"]]


@pytest.mark.parametrize(
    ("module", "is_package", "level", "target", "expected"),
    [
        ("pkg.a.b", False, 1, "c", "pkg.a.c"),
        ("pkg.a.b", False, 2, None, "pkg"),
        ("pkg.a", True, 1, "c", "pkg.a.c"),
        ("pkg.a", True, 2, "c", "pkg.c"),
        ("pkg.a.b", False, 0, "x.y", "x.y"),
    ],
)
def test_relative_imports_resolve(
    module: str, is_package: bool, level: int, target: str | None, expected: str
) -> None:
    assert _resolve(module, is_package, level, target) == expected
