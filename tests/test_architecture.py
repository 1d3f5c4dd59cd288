"""The package's shape: layers that only import downwards, no import cycles, thin tools, and no
torch where none is needed. Imports are read from the source (every `import`, including the
ones inside functions), not from a running interpreter.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

PACKAGE = ROOT / "harness"

LAYERS = [
    {"registry", "files", "console", "metrics", "topology"},
    {"dist", "config"},
    {"rundir"},
    {"data", "models", "losses", "stages"},
    {"grid"},
    {"run"},
    {"sweep", "launch"},
    {"report"},
    {"generate"},
    {"cli"},
]
"""harness/<name> by layer, lowest first: a module may import from its own layer and the ones below."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The harness modules `path` imports (`from harness.a import b` is harness.a.b when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("harness")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "harness" and layer(m) < 0] == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_only_go_down_the_layers():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in graph().items() for d in deps if m != "harness" and layer(d) > layer(m)]
    assert upward == []


def test_the_package_root_imports_nothing_of_its_own():
    assert graph()["harness"] == set()


def test_tools_are_thin():
    for tool in (ROOT / "tools").glob("*.py"):
        text = tool.read_text()
        assert "argparse" not in text and len(text.splitlines()) < 25, tool.name


@pytest.mark.parametrize("code", [
    "import harness",
    "import harness; harness.load_grid; harness.RunDir; harness.signature",
    "from harness.cli import sweep",  # --status and --cancel
])
def test_no_torch_where_none_is_needed(code):
    check = f"{code}; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_status_and_cancel_run_without_torch(tmp_path):
    """tools/sweep.py --status and --cancel, with torch made unimportable."""
    for flag in ("--status", "--cancel"):
        code = ("import runpy, sys; sys.modules['torch'] = None; "
                f"sys.argv = ['tools/sweep.py', 'jobs/demo.yaml', '{flag}', '--runs', {str(tmp_path)!r}]; "
                "runpy.run_path('tools/sweep.py', run_name='__main__')")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "4 cells" in out.stdout or "cancelled 0" in out.stdout
