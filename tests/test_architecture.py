"""The package's layering contract (docs/architecture.md), checked on the source with the AST.

- Imports of leanvit's own modules run one way, down the layer list; a violation names the file,
  line and the two layers.
- No function-local imports of leanvit's own modules, except in ``leanvit/cli`` (command modules import
  the library when their command runs, so that ``--help`` is instant).
- No function-local imports of the standard library or of a hard dependency outside ``leanvit/cli`` (they
  defer nothing); optional packages (pip extras) and the few heavy imports in ``DEFERRED_IMPORTS`` stay local.
- No import cycles between modules.
"""
from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "leanvit"

# Lower index = lower layer. A module may import only from its own layer or lower ones.
LAYERS = [
    ("_io", "_text", "_flags", "_lazy", "errors", "layers"),
    ("models",),
    ("zoo", "timm_bridge"),
    ("deploy",),
    ("bench",),
    ("train",),
    ("dense", "analysis"),
    ("cli", "__main__"),
]
# Sibling areas of one layer that must not import each other.
SIBLINGS_INDEPENDENT = {("dense", "analysis"), ("analysis", "dense")}


def _layer_of(area: str) -> int:
    for i, names in enumerate(LAYERS):
        if area in names:
            return i
    raise AssertionError(f"leanvit/{area} is not in the layer list of tests/test_architecture.py: add it")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported leanvit module, line, inside a function) for every import of leanvit in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name.split(".")[0] == "leanvit")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "leanvit":
                    if child.module is None or target == "leanvit":
                        # ``from leanvit import x``: module leanvit.x when it is one, else the package itself
                        found.extend((_submodule(target, a.name), child.lineno, in_function) for a in child.names)
                    else:
                        found.append((target, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _submodule(package: str, name: str) -> str:
    folder = PACKAGE.parent.joinpath(*package.split("."))
    return f"{package}.{name}" if (folder / f"{name}.py").exists() or (folder / name).is_dir() else package


def _area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_run_down_the_layers():
    problems = []
    for path in _sources():
        src_area = _area(_module_name(path))
        if src_area is None:
            continue  # leanvit/__init__.py re-exports lazily by name
        for target, line, _ in _imports(path):
            dst_area = _area(target)
            if dst_area is None or dst_area == src_area:
                continue
            if _layer_of(dst_area) > _layer_of(src_area) or (src_area, dst_area) in SIBLINGS_INDEPENDENT:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                                f"({dst_area} is not below {src_area})")
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_function_local_imports_of_leanvit():
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function"
        for path in _sources() if _area(_module_name(path)) != "cli"
        for target, line, local in _imports(path)
        if local
    ]
    assert not problems, "move these imports to the top of their module:\n" + "\n".join(problems)


# Hard-dependency or torch imports that are worth deferring: module -> why.
DEFERRED_IMPORTS = {
    "torch._inductor": "about 3 s to import; only torch.compile's freezing needs it",
    "torch.utils.tensorboard": "needs the optional tensorboard package (the train extra)",
}
_IMPORT_NAMES = {"pyyaml": "yaml"}  # distribution -> import name where they differ


def _hard_dependencies() -> set[str]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    return {_IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}


def _function_local_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every absolute import inside a function of ``path``."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(a.name, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    found.append((node.module, node.lineno))
    return sorted(set(found), key=lambda f: f[1])


def test_no_function_local_imports_of_hard_dependencies_or_the_standard_library():
    eager = _hard_dependencies() | set(sys.stdlib_module_names)
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} inside a function"
        for path in _sources() if _area(_module_name(path)) != "cli"
        for module, line in _function_local_imports(path)
        if module.split(".")[0] in eager and not any(module == d or module.startswith(d + ".") for d in DEFERRED_IMPORTS)
    ]
    assert not problems, "these defer nothing; move them to the top of their module:\n" + "\n".join(problems)


def test_no_import_cycles():
    modules = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, _, local in _imports(path):
            if local:
                continue
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = dfs(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_contract_catches_an_upward_import(tmp_path, monkeypatch):
    # The checker itself must be able to fail: a models module importing bench is reported.
    fake = tmp_path / "leanvit"
    (fake / "models").mkdir(parents=True)
    (fake / "bench").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("")
    (fake / "bench" / "__init__.py").write_text("")
    (fake / "zoo.py").write_text("")
    (fake / "models" / "bad.py").write_text("from ..bench import runner\n\ndef f():\n    from .. import zoo\n"
                                            "    import shutil\n    from timm.data import Mixup\n"
                                            "    import torch._inductor.config\n    import onnx\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    try:
        test_imports_run_down_the_layers()
    except AssertionError as e:
        assert "leanvit/models/bad.py:1 imports leanvit.bench" in str(e)
    else:
        raise AssertionError("the layering test did not catch models -> bench")
    try:
        test_no_function_local_imports_of_leanvit()
    except AssertionError as e:
        assert "bad.py:4 imports leanvit.zoo inside a function" in str(e)
    else:
        raise AssertionError("the local-import test did not catch an import inside a function")
    try:
        test_no_function_local_imports_of_hard_dependencies_or_the_standard_library()
    except AssertionError as e:
        found = str(e).split("assert ")[0]  # the message, without pytest's repr of the list
        assert "bad.py:5 imports shutil inside" in found and "bad.py:6 imports timm.data inside" in found, found
        assert "bad.py:7" not in found and "bad.py:8" not in found, found  # deferred / optional: allowed
    else:
        raise AssertionError("the local-import test did not catch a stdlib / hard-dependency import in a function")


def test_no_private_names_of_other_packages() -> None:
    """leanvit uses torch / torchvision / timm through their public API: no ``from pkg... import _name`` and no
    import of an underscored module of torchvision or timm (their private helpers change without notice)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                top = node.module.split(".")[0]
                if top in ("torchvision", "timm"):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private or any(p.startswith("_") for p in node.module.split(".")[1:]):
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.module} {private}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] in ("torchvision", "timm") and any(p.startswith("_") for p in parts[1:]):
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {a.name}")
    assert not found, found
