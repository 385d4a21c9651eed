"""One direction of imports, and every module importable on its own.

The SDK that workflow code imports, and storage, depend on nothing of the engine; the
API depends on nothing of `workers/`; shared types live in app/model. Dev tooling (the
bench, the dev stack) stays apart, and only the bench imports DBOS.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import app
import workers

REPO = Path(__file__).resolve().parents[2]

# Each layer, and what it may import of Chainline besides itself.
ALLOWED = {
    "app.model": {"app.errors", "app.settings"},
    "app.workflows": {"app.model", "app.errors", "app.settings"},
    "app.storage": {"app.model", "app.errors", "app.settings"},
    "app.engine": {"app.model", "app.errors", "app.settings", "app.storage", "app.workflows"},
    "app.messaging": {"app.engine.dispatch", "app.errors", "app.settings"},
    "app.api": {
        "app.model",
        "app.errors",
        "app.settings",
        "app.storage",
        "app.workflows",
        "app.engine",
        "app.messaging",
    },
}


def _modules() -> list[str]:
    names = []
    for package in (app, workers):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            names.append(info.name)
    return sorted(names)


def _path(module: str) -> Path:
    base = REPO / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(module: str) -> set[str]:
    tree = ast.parse(_path(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    allowed = ALLOWED[layer] | {layer}
    for module in _modules():
        if not _within(module, layer):
            continue
        for imported in _imports(module):
            if _within(imported, "app") or _within(imported, "workers"):
                assert any(_within(imported, a) for a in allowed), f"{module} imports {imported}"


def test_dev_tooling_is_imported_only_by_the_cli_and_itself() -> None:
    for module in _modules():
        if _within(module, "app.devtools") or module == "app.cli":
            continue
        assert not any(_within(i, "app.devtools") for i in _imports(module)), module


def test_only_the_bench_imports_dbos() -> None:
    importers = [m for m in _modules() if any(_within(i, "dbos") for i in _imports(m))]
    assert importers == ["app.devtools.bench_peer"]


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    def import_alone(module: str) -> tuple[str, int, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        return module, done.returncode, done.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [r for r in pool.map(import_alone, _modules()) if r[1] != 0]
    assert failures == []
