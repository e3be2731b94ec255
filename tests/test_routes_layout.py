"""The URLs the dashboard serves, and where they are declared.

Every route (path, methods, endpoint name) of `create_app()` is the one tests/snapshots/routes.txt lists, and of two
routes that can answer the same request the one listed first still answers it (`/runs/new` before `/runs/{run_id}`).
After an intended change of the URLs, LORABOARD_UPDATE_SNAPSHOTS=1 writes the file anew.

Routers follow one rule: a package per resource under app/routes/, its JSON routes in `api.py` (or `<feature>_api.py`)
under `APIRouter(prefix="/api")`, its pages in `pages.py` (or `<feature>_pages.py`), and no router module imports
another (what two share lives outside the routers).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from conftest import in_process_settings
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount

import app.routes
from app.main import create_app

SNAPSHOT = Path(__file__).parent / "snapshots" / "routes.txt"
RESOURCES = frozenset({"runs", "checkpoints", "evaluations", "datasets", "models", "playground", "serve", "jobs"})
ROUTER_MODULE = re.compile(r"app\.routes\.(?P<resource>\w+)\.(?P<feature>\w+_)?(?P<kind>api|pages)")


def flat_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes in the order a request tries them, through included routers at any depth."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from flat_routes(included.routes)
        else:
            yield route


def route_line(route: BaseRoute) -> str:
    """`GET,HEAD /runs/{run_id} run_page`: a route's methods, path and endpoint name."""
    methods = "MOUNT" if isinstance(route, Mount) else ",".join(sorted(getattr(route, "methods", None) or []))
    return f"{methods} {getattr(route, 'path', '')} {getattr(route, 'name', '')}"


def made_app(tmp_path: Path) -> FastAPI:
    """The app as `python -m app serve` makes it (its lifespan is not started: nothing is opened)."""
    return create_app(in_process_settings(tmp_path))


def witness(first: str, second: str) -> str | None:
    """A request path both route paths could match (a parameter matches one segment), or None."""
    left, right = first.split("/"), second.split("/")
    if len(left) != len(right):
        return None
    parts = []
    for one, other in zip(left, right, strict=True):
        parts.append(one if "{" not in one else other if "{" not in other else "1")
    return "/".join(parts)


def same_requests(first: Any, second: Any) -> bool:
    """Whether a request could match both routes: a method in common and a path both match."""
    methods = set(getattr(first, "methods", None) or []) & set(getattr(second, "methods", None) or [])
    path = witness(getattr(first, "path", ""), getattr(second, "path", ""))
    return bool(methods) and path is not None and all(
        re.fullmatch(route.path_regex, path) for route in (first, second))


def test_routes_are_the_listed_ones(tmp_path: Path) -> None:
    lines = [route_line(route) for route in flat_routes(made_app(tmp_path).routes)]
    if os.environ.get("LORABOARD_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text("\n".join(lines) + "\n")
    listed = SNAPSHOT.read_text().splitlines()
    assert sorted(lines) == sorted(listed), "\n".join(difflib.unified_diff(
        sorted(listed), sorted(lines), "tests/snapshots/routes.txt", "create_app()", lineterm=""))
    assert len(set(lines)) == len(lines), "a route is declared twice"


def test_overlapping_routes_keep_their_order(tmp_path: Path) -> None:
    routes = [route for route in flat_routes(made_app(tmp_path).routes) if hasattr(route, "path_regex")]
    listed = {line: place for place, line in enumerate(SNAPSHOT.read_text().splitlines())}
    pairs = [(first, second) for place, first in enumerate(routes) for second in routes[place + 1:]
             if same_requests(first, second)]
    assert pairs, "no two routes overlap: this check would check nothing"
    for first, second in pairs:
        assert listed[route_line(first)] < listed[route_line(second)], (
            f"{route_line(first)} now comes before {route_line(second)}: it answers requests the other answered")


def router_modules() -> dict[str, ModuleType]:
    """Every module under app/routes/ that declares a router (`router = APIRouter(...)`), by its dotted name."""
    found = {}
    for info in pkgutil.walk_packages(app.routes.__path__, "app.routes."):
        module = importlib.import_module(info.name)
        if isinstance(getattr(module, "router", None), APIRouter):
            found[info.name] = module
    return found


def imported_names(module: ModuleType) -> set[str]:
    """The dotted names a module's source imports, anywhere in it (`from a.b import c` gives a.b and a.b.c)."""
    names: set[str] = set()
    package = module.__name__.rpartition(".")[0]
    for node in ast.walk(ast.parse(Path(str(module.__file__)).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_every_router_module_lives_in_a_resource_package(tmp_path: Path) -> None:
    modules = router_modules()
    misplaced = [name for name in modules if not ((found := ROUTER_MODULE.fullmatch(name))
                                                  and found["resource"] in RESOURCES)]
    assert not misplaced, f"router modules outside app/routes/<resource>/(<feature>_)api|pages.py: {misplaced}"
    included = [route.original_router for route in made_app(tmp_path).routes if hasattr(route, "original_router")]
    assert {id(router) for router in included} == {id(module.router) for module in modules.values()}, (
        "the app includes a router that is not a resource's module's, or leaves one out")
    assert len(included) == len(modules), "a router is included twice"


def test_no_router_module_imports_another(tmp_path: Path) -> None:
    modules = router_modules()
    for name, module in modules.items():
        others = imported_names(module) & (set(modules) - {name})
        assert not others, f"{name} imports the router module(s) {sorted(others)}"


def test_json_routes_are_declared_through_the_api_prefix(tmp_path: Path) -> None:
    for name, module in router_modules().items():
        found = ROUTER_MODULE.fullmatch(name)
        assert found is not None, name
        router: APIRouter = module.router
        if found["kind"] == "api":
            assert router.prefix == "/api", f"{name}: a JSON router's prefix is /api, not {router.prefix!r}"
        else:
            assert router.prefix == "", f"{name}: a page router has no prefix, not {router.prefix!r}"
        for route in router.routes:
            assert isinstance(route, APIRoute), (name, route)
            declared = route.path.removeprefix(router.prefix)
            assert not declared.startswith("/api"), f"{name}: {route.path} spells /api inline"
            assert route.path.startswith("/api/") == (found["kind"] == "api"), (
                f"{name}: {route.path} is a {found['kind']} module's route")
    for route in flat_routes(made_app(tmp_path).routes):
        if isinstance(route, APIRoute):  # the OpenAPI schema documents the JSON routes, and only them
            assert route.include_in_schema == route.path.startswith("/api/"), route.path
