"""The layering docs/architecture.md promises, read off the imports of every module.

``settings.py`` is the ground floor: it imports nothing of gatehouse. ``auth/`` knows no routes,
``upstream/`` knows nothing of handlers or of ``tornado.web``, and ``frontdoor/`` (the browser
side's server connection) knows nothing of what it serves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEHOUSE = ("auth", "demo", "frontdoor", "handlers", "server", "settings", "upstream")

# module or package -> the imports it may never make
FORBIDDEN = {
    "settings.py": GATEHOUSE,
    "auth": ("handlers", "server", "frontdoor", "tornado.web"),
    "upstream": ("handlers", "server", "frontdoor", "auth", "tornado.web"),
    "frontdoor": ("handlers", "server", "auth", "upstream", "settings", "tornado.web"),
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
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
