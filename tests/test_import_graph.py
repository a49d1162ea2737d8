"""Imports run one way: no circle among the modules of bit_keras and hub_export, and few imports inside functions.

Read from the source with `ast`, so nothing is imported: an import inside a
function is an edge too, since a circle closed at call time is still a circle.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bit_keras", "hub_export")
# Imports of the package's own modules inside functions: each needs a reason (an optional dependency, a real cycle).
MAX_FUNCTION_LEVEL = 12


def modules(root=ROOT):
    """{dotted module name: its source path} of every module of the packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def imports(name, path, known):
    """(imported own module, inside a function?) for each own import in the module `name`."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]

    def resolve(dotted):  # the module itself, or the package holding the attribute
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package
                    for _ in range(child.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{base}" if base else parent
                # `from package import module` imports the module; `from module import name`, the module.
                targets = [f"{base}.{alias.name}" for alias in child.names]
            else:
                yield from walk(child, inside)
                continue
            for target in targets:
                module = resolve(target)
                if module and module != name:
                    yield module, inside, child.lineno
            yield from walk(child, inside)

    yield from walk(tree, False)


def graph(root=ROOT):
    known = modules(root)
    edges = {name: set() for name in known}
    function_level = []
    for name, path in known.items():
        for module, inside, line in imports(name, path, known):
            edges[name].add(module)
            if inside:
                function_level.append(f"{name}:{line} -> {module}")
    return edges, function_level


def cycles(edges):
    """The circles of `edges`: strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_circle_in_the_import_graph():
    edges, _ = graph()
    assert "hub_export" in edges["bit_keras.cli"]  # the graph sees across the two packages
    assert cycles(edges) == []


def test_few_imports_of_own_modules_inside_functions():
    _, function_level = graph()
    assert len(function_level) <= MAX_FUNCTION_LEVEL, function_level


@pytest.mark.parametrize(
    "source, circle",
    [
        ("from hub_export.deploy import run_exported\n", ["hub_export.deploy", "hub_export.metadata"]),
        ("def read():\n    from hub_export import deploy\n", ["hub_export.deploy", "hub_export.metadata"]),
    ],
)
def test_a_circle_is_found(tmp_path, source, circle):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "hub_export" / "deploy.py").write_text("from hub_export import metadata\n")
    (tmp_path / "hub_export" / "metadata.py").write_text(source)
    edges, function_level = graph(str(tmp_path))
    assert cycles(edges) == [circle]
    assert len(function_level) == source.startswith("def")
