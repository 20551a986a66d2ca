"""The house's layering, read from the source with ``ast``: the kernels never import the
facade, and no module imports itself back through others (imports inside functions count:
a lazy import is still a join)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules():
    """{dotted name: path} of fastbp/ and of kernels/ (as fastbp.kernels)."""
    found = {}
    for top, package in (("fastbp", "fastbp"), ("kernels", "fastbp.kernels")):
        base = os.path.join(ROOT, top)
        for folder, dirs, files in os.walk(base):
            # fastbp/kernels links to kernels/, which is walked under its own name.
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))
                       and d != "__pycache__"]
            rel = os.path.relpath(folder, base)
            parts = [package] + ([] if rel == "." else rel.split(os.sep))
            for f in files:
                if f.endswith(".py"):
                    name = parts if f == "__init__.py" else parts + [f[:-3]]
                    found[".".join(name)] = os.path.join(folder, f)
    return found


MODULES = _modules()


def _type_checking_only(node, parents):
    return any(isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test)
               for p in parents.get(node, ()))


def _imports(name, path):
    """The fastbp modules that ``name`` imports, anywhere in its file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    here = name.split(".") if is_package else name.split(".")[:-1]
    parents = {}
    for p in ast.walk(tree):
        for c in ast.iter_child_nodes(p):
            parents[c] = parents.get(p, ()) + (p,)
    out = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            # "from . import x" names a submodule when there is one, else the package.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:        # fastbp.kernels.cpu.x -> fastbp.kernels.cpu
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_source_tree_is_found():
    assert {"fastbp", "fastbp.model", "fastbp.kernels", "fastbp.kernels.cpu",
            "fastbp.engines.cpu"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("fastbp.kernels")))
def test_kernels_never_import_the_facade(name):
    facade = sorted(t for t in GRAPH[name] if not t.startswith("fastbp.kernels"))
    assert not facade, f"{name} imports the facade: {facade}"


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_no_import_cycles():
    # A package's __init__ may import its own submodules (that is what a package is); the
    # other direction, a submodule reaching back into its package's __init__, is a join.
    graph = {n: {t for t in ts if not (MODULES[n].endswith("__init__.py") and
                                       t.startswith(n + "."))}
             for n, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_package_is_installed():
    """pyproject.toml lists the packages explicitly (kernels/ maps to fastbp.kernels): a new
    subpackage missing there would be absent from every install."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    packages = {n for n, p in MODULES.items() if p.endswith("__init__.py")}
    assert packages == listed
