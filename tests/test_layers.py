"""The core library stands alone: serve/ and jobs/ are adapters over it, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "imgsound_core"
ADAPTERS = {"ray", "boto3", "botocore", "fastapi", "starlette", "serve", "jobs"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_core_imports_no_adapter_and_no_service_library():
    offenders = {
        str(path.relative_to(CORE.parent)): sorted(imported_roots(path) & ADAPTERS) for path in CORE.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    assert len(offenders) > 30  # the scan saw the package


def test_the_scan_would_see_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jobs.store import open_store\n    import ray.util\n")
    assert imported_roots(module) == {"jobs", "ray"}
