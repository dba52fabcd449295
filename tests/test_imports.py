"""The house rules, read from the source: the runtime path and the shared services import no torch and nothing
from the floors above them, no module takes a private name from another file, and the package has no import
cycles. The imports are read with ast, so nothing is imported to check them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deim_edge"
# the runtime path and the torch-free shared services (relative to the package; a folder means all of it)
GROUND = ("runtimes", "tensorrt", "formats", "detector.py", "preprocess.py", "decode.py", "results.py", "metadata.py",
          "compare.py", "media.py", "accuracy.py", "synthetic.py", "sizes.py", "fileio.py", "errors.py", "progress.py",
          "variants.py")
UPPER = ("torch", "deim_edge.export", "deim_edge.calibration", "deim_edge.training", "deim_edge.bench",
         "deim_edge.models")
# torch imported when used, as an engine: the .pth runtime, ExecuTorch's Python runtime (it takes torch tensors),
# and TensorRT's device memory where cuda-python is missing
TORCH_ENGINES = ("runtimes/torch.py", "runtimes/executorch.py", "tensorrt/cuda.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(path: Path, node: ast.ImportFrom | ast.Import) -> list[tuple[str, list[str]]]:
    """(absolute module, names taken from it) for one import statement of the file at `path`."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    if node.level == 0:
        return [(node.module or "", [a.name for a in node.names])]
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - node.level + 1]
    module = ".".join(base + ([node.module] if node.module else []))
    return [(module, [a.name for a in node.names])]


def imports(path: Path, module_level: bool) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of a file's imports: those run at import time (module_level), or all of them.
    Imports under `if TYPE_CHECKING:` never run and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (top or not module_level):
                found.extend((m, names, child.lineno) for m, names in resolve(path, child))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def is_ground(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == g or rel.startswith(g + "/") for g in GROUND)


def test_the_ground_floors_import_nothing_from_above() -> None:
    bad = []
    for path in filter(is_ground, files()):
        rel = path.relative_to(PACKAGE).as_posix()
        for module, _, line in imports(path, module_level=True):
            if any(module == u or module.startswith(u + ".") for u in UPPER):
                bad.append(f"{rel}:{line} imports {module}")
        if rel in TORCH_ENGINES:
            continue
        for module, _, line in imports(path, module_level=False):  # not even lazily
            if module.split(".")[0] == "torch" or any(module.startswith(u) for u in UPPER[1:]):
                bad.append(f"{rel}:{line} imports {module} inside a function")
    assert not bad, "\n".join(bad)


def test_no_module_takes_a_private_name_from_another_file() -> None:
    bad = []
    for path in files():
        for module, names, line in imports(path, module_level=False):
            if not module.startswith("deim_edge"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} from {module} import {', '.join(names)}")
    assert not bad, "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports at import time (a package's __init__ counts as the package)."""
    known = {module_name(p) for p in files()}
    graph: dict[str, set[str]] = {}
    for path in files():
        edges = set()
        for module, names, _ in imports(path, module_level=True):
            for target in [f"{module}.{n}" for n in names] + [module]:
                if target in known:
                    edges.add(target)
                    break
        graph[module_name(path)] = edges - {module_name(path)}
    return graph


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                walk(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    # a package importing its own submodules (its face) is how Python packages work, not a loop of the code
    cycles = [c for c in cycles if not all(p.startswith(c.split(" -> ")[0]) for p in c.split(" -> "))]
    assert not cycles, "\n".join(cycles)


def run_without_torch(code: str) -> None:
    import subprocess
    import sys

    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'torch':\n"
               "            raise ImportError('torch is blocked')\n"
               "sys.meta_path.insert(0, Block())\n")
    result = subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["deim_edge.formats", "deim_edge.compare", "deim_edge.runtimes",
                                    "deim_edge.media", "deim_edge.accuracy", "deim_edge.synthetic"])
def test_shared_modules_import_without_torch(module: str) -> None:
    run_without_torch(f"import {module}\n"
                      "assert not any(m.startswith(('deim_edge.export', 'deim_edge.training', 'deim_edge.bench')) "
                      "for m in sys.modules), sorted(sys.modules)\n")


def test_the_export_cli_imports_without_torch() -> None:
    """On a Jetson without torch, `python -m deim_edge.export --build-engine` and --list-targets still run."""
    run_without_torch("import deim_edge.export, deim_edge.export.__main__\n")
