"""flows -> tasks -> llm: the library never loads the orchestrator."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_llm_never_imports_prefect_tasks_or_flows():
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & {"prefect", "tasks", "flows"})
                 for p in (REPO / "llm").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_tasks_never_import_flows():
    offenders = {str(p.relative_to(REPO)): "flows" for p in (REPO / "tasks").rglob("*.py") if "flows" in _imports(p)}
    assert offenders == {}


def test_importing_the_library_does_not_load_prefect():
    code = ("import sys, pkgutil, importlib, llm\n"
            "for m in pkgutil.walk_packages(llm.__path__, 'llm.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
