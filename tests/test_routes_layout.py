"""The URLs the dashboard serves, and where they are declared.

Every route (path, methods, endpoint name) of `create_app()` is the one tests/snapshots/routes.txt lists, and of two
routes that can answer the same request the one listed first still answers it (`/runs/new` before `/runs/{run_id}`).
After an intended change of the URLs, LORABOARD_UPDATE_SNAPSHOTS=1 writes the file anew.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest import in_process_settings
from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount

from app.main import create_app

SNAPSHOT = Path(__file__).parent / "snapshots" / "routes.txt"


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
