"""The layering docs/architecture.md promises, read off the imports of every module.

``settings.py`` is the ground floor: it imports nothing of gatehouse. ``auth/`` knows no routes,
``upstream/`` knows nothing of handlers or of ``tornado.web``, ``frontdoor/`` (the browser
side's server connection) knows nothing of what it serves, and neither does ``ops/`` (the
supervisor, the drain and its state, which the handlers read). ``shared/`` (state shared
through Redis) sits just above ``settings``: it knows Redis and nothing of requests, sessions
or upstreams. The metrics are the handlers' and ``ops/``'s business: the layers below expose
hooks and never import them; and ``prometheus_client`` is imported at module level only by the
metrics modules of ``ops/``, which nothing imports before ``server.main`` has chosen between
memory and files (``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEHOUSE = ("auth", "demo", "frontdoor", "handlers", "ops", "server", "settings", "shared", "upstream")

# module or package -> the imports it may never make
FORBIDDEN = {
    "settings.py": GATEHOUSE,
    "auth": ("handlers", "server", "frontdoor", "tornado.web", "ops", "prometheus_client"),
    "upstream": ("handlers", "server", "frontdoor", "auth", "tornado.web", "ops", "prometheus_client"),
    "frontdoor": ("handlers", "server", "auth", "upstream", "settings", "tornado.web", "ops", "prometheus_client"),
    "ops": ("handlers", "server", "auth", "upstream", "frontdoor", "demo", "settings", "tornado"),
    "shared": ("handlers", "server", "auth", "upstream", "frontdoor", "demo", "ops", "tornado", "prometheus_client"),
}
# The only modules that import prometheus_client when they are imported (see the docstring).
METRICS_MODULES = {"ops/metrics.py", "ops/metrics_exposition.py"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imports_on_import(path: Path) -> set[str]:
    """What importing ``path`` imports: its imports outside functions and ``if TYPE_CHECKING``."""
    names: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return names


def files(where: str) -> list[Path]:
    target = ROOT / where
    return [target] if target.is_file() else sorted(target.glob("*.py"))


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(where: str) -> None:
    found = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files(where)
        for name in imports_of(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[where])
    }
    assert found == set()


def test_the_collector_sees_both_forms_of_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import handlers.base\nfrom tornado.web import RequestHandler\nfrom . import sibling\n")
    assert imports_of(module) == {"handlers.base", "tornado.web"}


def test_only_the_metrics_modules_import_prometheus_client_when_imported() -> None:
    gatehouse = [ROOT / "server.py", ROOT / "settings.py"]
    gatehouse += [path for package in GATEHOUSE if (ROOT / package).is_dir() for path in files(package)]
    importing = {
        str(path.relative_to(ROOT))
        for path in gatehouse
        if any(name == "prometheus_client" or name.startswith("prometheus_client.") for name in imports_on_import(path))
    }
    assert importing == METRICS_MODULES
    # ... and every module that imports those at module level is one of them.
    metrics = {"ops.metrics", "ops.metrics_exposition"}
    assert {str(path.relative_to(ROOT)) for path in gatehouse if imports_on_import(path) & metrics} <= METRICS_MODULES


def test_the_import_collectors_see_what_they_should(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    lines = ["import a", "if TYPE_CHECKING:", "    import b", "def f():", "    import c"]
    lines += ["try:", "    import d", "except E:", "    import e"]
    module.write_text("\n".join(lines) + "\n")
    assert imports_on_import(module) == {"a", "d", "e"}
    assert imports_of(module) == {"a", "b", "c", "d", "e"}
