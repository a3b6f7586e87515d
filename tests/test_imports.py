"""The import graph of ``workbench``: no cycles (function-level imports included), the library never imports the
command line (``workbench.cli``), and neither do the notebooks.

The graph is read from the source with :mod:`ast`, not by importing anything: every ``import`` and ``from ...
import`` statement anywhere in a module (at module level, in functions, in classes; not under ``if
TYPE_CHECKING:``, which never runs) is an edge to the module it names. ``from pkg import name`` goes to
``pkg.name`` when that is a module, else to ``pkg``. Importing ``a.b.c`` also imports ``a`` and ``a.b``, but those
implicit edges to parent packages are left out: a package's ``__init__`` that imports nothing cannot close a cycle,
and one that does has its own edges. Dynamic imports (``importlib.import_module``) are not seen."""

from __future__ import annotations

import ast
import json
from collections import deque
from pathlib import Path

from workbench.environment import REPO_ROOT

PACKAGE = "workbench"
CLI = "workbench.cli"


# -- the walker ------------------------------------------------------------------------------------------------
def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a folder under ``root``) by dotted name; a package is its ``__init__.py``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


class _ImportCollector(ast.NodeVisitor):
    """(module named, line) for every import statement that runs, in a module called ``module``."""

    def __init__(self, module: str, is_package: bool, modules: set[str], package: str):
        self.current_package = module if is_package else module.rpartition(".")[0]
        self.modules = modules
        self.package = package
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.current_package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if alias.name != "*" and submodule in self.modules else base, node.lineno)

    def _add(self, name: str, line: int) -> None:
        if name != self.package and not name.startswith(self.package + "."):
            return
        while name not in self.modules and "." in name:  # a name that is no module file: its nearest package
            name = name.rpartition(".")[0]
        if name in self.modules:
            self.found.append((name, line))


def imports_in(source: str, module: str, is_package: bool, modules: set[str], package: str) -> list[tuple[str, int]]:
    """(module, line) for each import of ``package`` in ``source``, the text of module ``module``."""
    collector = _ImportCollector(module, is_package, modules, package)
    collector.visit(ast.parse(source))
    return collector.found


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, for every module of ``package``."""
    files = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imports_in(path.read_text(), module, path.name == "__init__.py", set(files), package):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _shortest_cycle_through(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt in within and nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return []


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Import cycles as chains ``[a, b, ..., a]``: for every module in a cycle, the shortest cycle through it (each
    cycle once), so that every strongly connected group of modules is shown with all its members."""
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for component in _strongly_connected(graph):
        if len(component) == 1 and next(iter(component)) not in graph[next(iter(component))]:
            continue
        for start in sorted(component):
            chain = _shortest_cycle_through(graph, start, component)
            ring = chain[:-1]
            first = ring.index(min(ring))
            key = tuple(ring[first:] + ring[:first])
            if key not in seen:
                seen.add(key)
                cycles.append([*key, key[0]])
    return cycles


def describe(chain: list[str], graph: dict[str, dict[str, int]]) -> str:
    """``a (line 12) -> b (line 30) -> a``: each module with the line of its import of the next."""
    steps = [f"{module} (line {graph[module][nxt]})" for module, nxt in zip(chain, chain[1:], strict=False)]
    return " -> ".join([*steps, chain[-1]])


def notebook_imports(path: Path, modules: set[str]) -> list[tuple[int, str]]:
    """(cell index, module) for each import of ``workbench`` in the code cells of the notebook at ``path``
    (IPython's ``%`` and ``!`` lines are left out)."""
    found = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
        for module, _ in imports_in("\n".join(lines), "__notebook__", False, modules, PACKAGE):
            found.append((i, module))
    return found


# -- the tests -------------------------------------------------------------------------------------------------
def _workbench_graph() -> dict[str, dict[str, int]]:
    return import_graph(REPO_ROOT, PACKAGE)


def test_the_walker_sees_the_package():
    graph = _workbench_graph()
    assert {"workbench", "workbench.records", "workbench.cli", "workbench.cli.common"} <= set(graph)
    assert "workbench.records" in graph["workbench.cli.common"]


def test_no_import_cycles():
    graph = _workbench_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in workbench:\n" + "\n".join(describe(c, graph) for c in cycles)


def test_library_never_imports_the_cli():
    graph = _workbench_graph()
    library = [m for m in graph if m != CLI and not m.startswith(CLI + ".")]
    offenders = [
        f"{module} (line {line}) imports {target}"
        for module in library
        for target, line in graph[module].items()
        if target == CLI or target.startswith(CLI + ".")
    ]
    assert not offenders, "\n".join(offenders)


def test_notebooks_import_only_the_library():
    modules = set(module_files(REPO_ROOT, PACKAGE))
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    found = {path.name: notebook_imports(path, modules) for path in notebooks}
    assert all(found.values()), "a notebook without a workbench import: is the walker reading the cells?"
    offenders = [
        f"{name} cell {cell}: {module}"
        for name, imports in found.items()
        for cell, module in imports
        if module == CLI or module.startswith(CLI + ".")
    ]
    assert not offenders, "\n".join(offenders)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walker_finds_a_cycle_through_function_level_and_relative_imports(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "def later():\n    from . import c\n",
            "pkg/c.py": "from pkg.sub import d\n",
            "pkg/sub/__init__.py": "from ..a import helper\n",
            "pkg/sub/d.py": "from pkg import a, name_in_init\nimport os\n",
            "pkg/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nimport pkg.c\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.c": 2}  # relative, inside a function
    assert graph["pkg.c"] == {"pkg.sub.d": 1}  # from a package, a submodule: no edge to the package itself
    assert graph["pkg.sub"] == {"pkg.a": 1}  # relative from a package's __init__
    assert graph["pkg.sub.d"] == {"pkg.a": 1, "pkg": 1}  # a name that is not a module: the package
    assert graph["pkg.e"] == {"pkg.c": 4}  # the TYPE_CHECKING import never runs
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d", "pkg.a"]]
    assert describe(cycles[0], graph) == (
        "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 1) -> pkg.sub.d (line 1) -> pkg.a"
    )


def test_walker_reports_every_cycle_of_a_tangle_and_a_self_import(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\nimport pkg.c\n",
            "pkg/b.py": "import pkg.a\n",
            "pkg/c.py": "import pkg.a\n",
            "pkg/selfish.py": "import pkg.selfish\n",
            "pkg/fine.py": "import pkg.a\n",
        },
    )
    cycles = find_cycles(import_graph(tmp_path, "pkg"))
    assert sorted(cycles) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.a", "pkg.c", "pkg.a"], ["pkg.selfish", "pkg.selfish"]]
