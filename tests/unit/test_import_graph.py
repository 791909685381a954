"""Layering rules read from the source (every import, including ones inside functions):
`services.common.store` knows no tier, and nothing uses grpc_health's private `_async` module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("services.history", "services.router", "services.edge")


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "grpc_gen" not in p.parts)


def test_the_common_store_imports_no_tier() -> None:
    files = sources("services/common/store")
    assert {p.name for p in files} >= {"base.py", "memory.py", "dragonfly.py", "factory.py"}
    offending = {f"{p.relative_to(ROOT)}: {m}" for p in files for m in imported_modules(p)
                 if m.startswith(TIERS)}
    assert offending == set()


def test_the_check_sees_a_tier_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f() -> None:\n    from services.history.store.base import StreamStore\n")
    assert "services.history.store.base" in set(imported_modules(probe))


def test_no_module_imports_the_private_async_health_servicer() -> None:
    private = "grpc_health.v1._async"
    offending = {str(p.relative_to(ROOT)) for p in sources("services", "tests", "bench", "clients/python")
                 for m in imported_modules(p) if m == private or m.startswith(private + ".")}
    assert offending == set()
