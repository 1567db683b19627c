"""Who may import whom (docs/ARCHITECTURE.md, "Layers"), enforced.

- The pure core (models, money, errors, limits, time rules and expiry, identification,
  pricing, refunds, coupons) imports no SQLite, gRPC, serial or printer code, and nothing
  of the till application: a fresh interpreter importing a core module has none of them.
- sync/ and printer/ depend on the core and the ledger, never on the till application
  (`service`, `cli`, `server`, `http_api`, `app`, `demo`); only their own command-line
  modules (edges, plugged into `tillpoint`) and the loopback harness (which builds tills
  the way agent/app.py does) may.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

CORE = (
    "errors",
    "limits",
    "money",
    "models",
    "expiry",
    "identify",
    "pricing",
    "refunds",
    "coupons",
    "results",
)
FORBIDDEN_IN_CORE = (
    "sqlite3",
    "_sqlite3",
    "sqlite_utils",
    "grpc",
    "google.protobuf",
    "serial",
    "escpos",
    "tillpoint.v1",
    "tillpoint.sync",
    "tillpoint.printer",
    *(
        f"tillpoint.agent.{m}"
        for m in (
            "service",
            "cache",
            "ledger",
            "db",
            "server",
            "cli",
            "app",
            "http_api",
            "demo",
            "wire",
        )
    ),
)
APPLICATION = tuple(
    f"tillpoint.agent.{m}" for m in ("service", "cli", "server", "http_api", "app", "demo")
)
# Edges and harnesses of sync/ and printer/ that may reach the till application.
MAY_IMPORT_APPLICATION = {"sync/cli.py", "sync/loopback.py", "printer/cli.py"}

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_nothing_but_the_core(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, f"tillpoint.agent.{module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    loaded = json.loads(out)
    bad = [
        name
        for name in loaded
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_CORE)
    ]
    assert bad == [], f"tillpoint.agent.{module} imports {bad}"


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Every module an import statement names (TYPE_CHECKING and function-local ones too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside sync/ or printer/, never the agent
                base = f"tillpoint.{package}" + (f".{base}" if base else "")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_sync_and_printer_never_import_the_till_application() -> None:
    offenders = []
    for package in ("sync", "printer"):
        for path in sorted((REPO / package).glob("*.py")):
            where = path.relative_to(REPO).as_posix()
            if where in MAY_IMPORT_APPLICATION:
                continue
            names = _imports(ast.parse(path.read_text(encoding="utf-8")), package)
            offenders += [
                f"{where}: {n}"
                for n in sorted(names)
                if any(n == a or n.startswith(a + ".") for a in APPLICATION)
            ]
    assert offenders == []


def test_the_till_application_maps_nothing_to_proto() -> None:
    """`Agent` returns typed results (agent/results.py); proto messages are built only by
    the edges' mapper (agent/wire.py): importing the application loads no protobuf."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "tillpoint.agent.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    loaded = json.loads(out)
    assert [n for n in loaded if n.startswith(("google.protobuf", "tillpoint.v1"))] == []
    assert "tillpoint.agent.wire" not in loaded


def test_the_cli_prints_results_without_protobuf() -> None:
    """The CLI's JSON half of the mapper (results.json_of, receipt_from_json) is pure."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "tillpoint.agent.results"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert [n for n in json.loads(out) if n.startswith("google.protobuf")] == []


def test_the_till_application_writes_no_sql_of_its_own() -> None:
    """Every read and write of ledger.db is a named function of agent/ledger.py (issue 12):
    service.py keeps only its connections' PRAGMAs and read transactions."""
    text = (Path(__file__).parent.parent / "agent" / "service.py").read_text(encoding="utf-8")
    for verb in ("INSERT ", "SELECT ", "UPDATE ", "DELETE "):
        assert verb not in text, verb
