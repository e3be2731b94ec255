"""The import graph of app/ and worker/, read from the source (an AST walk, imports inside functions and under
`if TYPE_CHECKING:` included): the worker reaches no web library and no supervisor, app/contract/ stands alone,
and no two modules import each other, directly or around a circle.

`from pkg import name` is an edge to `pkg.name` when that is a module of ours, else to `pkg`; relative imports
are resolved against the importing module's package. A module imported runs its parent packages first, so what
a module reaches includes the `__init__` of every package on the way.

No source of ours in the worker imports jinja2 either: a model's chat template is rendered by transformers' own
renderer (worker/gguf_modelfile.py). At run time mlx-lm's tokenizer loads jinja2 itself, so the run-time check
leaves out what importing mlx_lm loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
OURS = ("app", "worker")
WEB_LIBRARIES = ("fastapi", "starlette", "sqlmodel", "jinja2")
TEMPLATES = "jinja2"  # at run time, loaded by mlx-lm's tokenizer itself
SUPERVISOR = "app.jobs.supervisor"
CONTRACT = "app.contract"


def module_name(path: Path) -> str:
    """`app/jobs/views.py` -> `app.jobs.views`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    """Every module of app/ and worker/, by dotted name."""
    return {module_name(path): path for top in OURS for path in sorted((PROJECT_DIR / top).rglob("*.py"))}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_names(tree: ast.AST, name: str, package: bool, modules: Iterable[str]) -> set[str]:
    """The dotted names a module's source imports, wherever the statement stands."""
    known = set(modules)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each of our modules -> the names it imports (ours as module names, others as their top package)."""
    modules = our_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for target in imported_names(tree, name, is_package(path), modules):
            top = target.split(".")[0]
            targets.add(target if top in OURS else top)
        graph[name] = targets
    return graph


def parents(name: str) -> list[str]:
    """The packages that run before `name` is imported: `app.jobs.views` -> `app`, `app.jobs`."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def path_to(graph: dict[str, set[str]], start: str, forbidden: set[str]) -> list[str] | None:
    """The shortest chain of imports from `start` to a forbidden name (parent packages followed too), or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        if current in forbidden:
            chain = [current]
            while came_from[chain[-1]] is not None:
                chain.append(came_from[chain[-1]])  # type: ignore[arg-type]
            return chain[::-1]
        for following in sorted(graph.get(current, set()) | set(parents(current))):
            if following not in came_from:
                came_from[following] = current
                queue.append(following)
    return None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph.get(node, set())):
            if following not in graph:
                continue
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_worker_reaches_no_web_library_nor_the_supervisor() -> None:
    graph = import_graph()
    workers = [name for name in sorted(graph) if name.split(".")[0] == "worker"]
    chains = [path_to(graph, name, {*WEB_LIBRARIES, SUPERVISOR}) for name in workers]
    found = [" -> ".join(chain) for chain in chains if chain]
    assert not found, "the worker reaches the web side:\n" + "\n".join(found)


def test_worker_imports_of_app_are_the_contract_only() -> None:
    graph = import_graph()
    direct = sorted(f"{name} imports {target}" for name, targets in graph.items() if name.split(".")[0] == "worker"
                    for target in targets
                    if target.split(".")[0] == "app" and not (target + ".").startswith(CONTRACT + "."))
    assert not direct, "the worker imports app modules outside app/contract/:\n" + "\n".join(direct)


def test_contract_imports_nothing_of_app_outside_itself_nor_a_web_library() -> None:
    graph = import_graph()
    contract = [name for name in graph if (name + ".").startswith(CONTRACT + ".")]
    assert contract, "app/contract/ has no modules"
    outside = sorted(f"{name} imports {target}" for name in contract for target in graph[name]
                     if target in (*WEB_LIBRARIES, SUPERVISOR)
                     or (target.split(".")[0] in OURS and not (target + ".").startswith(CONTRACT + ".")
                         and target != "app"))
    assert not outside, "app/contract/ imports outside itself:\n" + "\n".join(outside)


def test_no_import_circles() -> None:
    found = [" <-> ".join(circle) for circle in circles(import_graph())]
    assert not found, "import circles:\n" + "\n".join(found)


IMPORT_EVERY_WORKER_MODULE = """
import importlib, json, sys
import mlx_lm  # what mlx-lm loads itself (transformers brings jinja2 for chat templates) is not ours
before = {m.split(".")[0] for m in sys.modules}
for name in NAMES:
    importlib.import_module(name)
loaded = {m.split(".")[0] for m in sys.modules}
web = {top for top in loaded - before if top in WEB} | {top for top in loaded if top in WEB and top != TEMPLATES}
app = [m for m in sys.modules if m.startswith("app.") and not m.startswith("app.contract.") and m != "app.contract"]
print(json.dumps({"web": sorted(web), "app": sorted(app)}))
"""


def test_importing_every_worker_module_loads_no_web_library() -> None:
    """The real thing: a fresh interpreter imports every worker module, then names the web libraries loaded (beyond
    what mlx-lm loads itself) and the app modules outside the contract."""
    names = sorted(name for name in our_modules() if name.split(".")[0] == "worker")
    script = (f"NAMES = {names!r}\nWEB = {WEB_LIBRARIES!r}\nTEMPLATES = {TEMPLATES!r}\n"
              + IMPORT_EVERY_WORKER_MODULE)
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"web": [], "app": []}
