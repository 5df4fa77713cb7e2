"""The planes meet at one seam (shared/DESIGN.md, issue 16), checked from the code's imports.

Every module's imports are read with ``ast`` (those inside functions too):

* media/ imports neither ctl/ nor openai_flavor/: it is the lowest layer, and the seam
  (media/bridge.py, media/flavor.py, media/settings.py) lives in it;
* openai_flavor/ does not import ctl/: an AI flavor sees the call only through the bridge;
* ctl/ imports openai_flavor in one place only, ``import openai_flavor`` in ctl/config.py,
  which registers the flavor; from then on ctl/ reaches it through the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANES = ("ctl", "media", "openai_flavor")
# The one module of ctl/ that may import the flavor, and the one way it may.
REGISTERING_PLACE = ("ctl/config.py", "import openai_flavor")


def imports(path: Path) -> list[tuple[str, str]]:
    """(imported module, the statement as written) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ast.unparse(node)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: a relative import ({ast.unparse(node)})")
    return found


def package_imports(package: str) -> list[tuple[str, str, str]]:
    """(module path, imported top-level package, statement) for a plane's every import."""
    rows = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module, statement in imports(path):
            top = module.partition(".")[0]
            if top in PLANES:
                rows.append((str(path.relative_to(ROOT)), top, statement))
    return rows


def test_every_plane_is_read():
    for package in PLANES:
        assert len(list((ROOT / package).rglob("*.py"))) > 3, package


def test_media_imports_neither_plane_above_it():
    wrong = [row for row in package_imports("media") if row[1] != "media"]
    assert wrong == [], "media/ imports the planes above it"


def test_the_ai_flavor_does_not_import_the_control_plane():
    wrong = [row for row in package_imports("openai_flavor") if row[1] == "ctl"]
    assert wrong == [], "openai_flavor/ imports ctl/"


def test_the_control_plane_imports_the_flavor_only_where_it_registers():
    flavor = [(path, statement) for path, top, statement in package_imports("ctl")
              if top == "openai_flavor"]
    assert flavor == [REGISTERING_PLACE], "ctl/ reaches openai_flavor/ outside the registry"
