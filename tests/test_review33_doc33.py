"""Review 33 (doc33): the documents a retailer's engineer reads say what the code does.

- docs/ARCHITECTURE.md, "Layers", read against the package's real import graph: every
  import statement of a file, those inside functions and under TYPE_CHECKING included
  (tests/test_layers.py imports each core module in a fresh interpreter, which sees only
  the imports that run at import time: a core function importing the ledger when called
  passed it).
- The layer diagram's "pure core" is the list the layer tests hold to the rule.
- Where a till keeps its files when nothing names a place: `$XDG_DATA_HOME` counts.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .test_layers import CORE

FOLDERS = {"agent": "tillpoint.agent", "sync": "tillpoint.sync", "printer": "tillpoint.printer"}
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def _imports(path: Path, package: str) -> set[str]:
    """Every module an import statement of `path` names, anywhere in the file, relative
    ones resolved against `package` (`from . import models` is `tillpoint.agent.models`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = parent + (f".{base}" if base else "")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the project modules and the top-level packages it imports."""
    paths = {
        f"{package}.{path.stem}": (path, package)
        for folder, package in FOLDERS.items()
        for path in sorted((REPO / folder).glob("*.py"))
        if path.stem != "__init__"
    }
    graph: dict[str, set[str]] = {}
    for module, (path, package) in paths.items():
        names = _imports(path, package)
        graph[module] = {n for n in names if n in paths and n != module} | {
            n.split(".")[0] for n in names if not n.startswith("tillpoint")
        }
    return graph


# What a layer below the application may not import at all: the transports, the devices,
# the hub's PKI, the web server, the TOML settings loader.
TRANSPORT_AND_DEVICES = {
    "sqlite3",
    "sqlite_utils",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "google",
    "serial",
    "escpos",
    "usb",
    "cryptography",
    "starlette",
    "uvicorn",
    "pydantic_settings",
}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def test_a_core_module_imports_only_the_core_even_inside_a_function() -> None:
    """ARCHITECTURE.md: "The pure core imports only itself, the standard library and
    pydantic". Read from the source, not from what an import happens to load."""
    graph = _graph()
    core = {f"tillpoint.agent.{m}" for m in CORE}
    wrong = []
    for module in sorted(core):
        for name in sorted(graph[module]):
            if name.startswith("tillpoint."):
                if name not in core:
                    wrong.append(f"{module} imports {name}")
            elif name not in STDLIB and name not in ("pydantic", "pydantic_core"):
                wrong.append(f"{module} imports {name}")
    assert wrong == []


STORAGE = ("db", "cache", "ledger", "files")
APPLICATION = ("service", "cli", "server", "http_api", "app", "demo", "wire", "forward")


def test_storage_imports_neither_the_application_nor_a_transport_nor_a_device() -> None:
    """ARCHITECTURE.md: storage (`db.py`, `cache.py`, `ledger.py`, and `files.py`, which
    writes every other file) imports the core; sync/ and printer/ import it, so it
    imports nothing of theirs, of the till application, gRPC, protobuf or serial.
    SQLite is its job; `config` only for its text helper (`shorten`), `lock` only for its
    timed flock (`flock_within`, the cache's switch lock)."""
    graph = _graph()
    allowed_agent = {f"tillpoint.agent.{m}" for m in (*CORE, *STORAGE, "config", "lock")}
    wrong = []
    for stem in STORAGE:
        module = f"tillpoint.agent.{stem}"
        for name in sorted(graph[module]):
            if name.startswith("tillpoint."):
                if name not in allowed_agent:
                    wrong.append(f"{module} imports {name}")
            elif name in TRANSPORT_AND_DEVICES - {"sqlite3", "sqlite_utils"}:
                wrong.append(f"{module} imports {name}")
    assert wrong == []
    assert not {f"tillpoint.agent.{m}" for m in APPLICATION} & allowed_agent


def test_the_layer_diagram_names_the_core_the_tests_hold_to_the_rule() -> None:
    """The diagram's "pure core" left out `results.py`, which the same document calls "a
    core module" and tests/test_layers.py holds to the core's rule: a new module placed
    by the diagram would have been placed without the typed results."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    start = text.index("pure core:")
    drawn = text[start : text.index("```", start)]
    named = set(re.findall(r"(\w+)\.py", drawn))
    assert named == set(CORE), (sorted(named - set(CORE)), sorted(set(CORE) - named))


@pytest.mark.parametrize(
    "doc",
    ["README.md", "docs/CONTRACT.md", "packaging/tillpoint.example.toml"],
)
def test_the_default_data_directory_is_said_as_paths_py_makes_it(
    doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's default data directory is `$XDG_DATA_HOME/tillpoint` (agent/paths.py);
    the documents said `~/.local/share/tillpoint` alone, so a support engineer on a
    desktop with XDG_DATA_HOME set looked for the ledger in the wrong place."""
    import os

    from tillpoint.agent.paths import default_data_dir

    if os.geteuid() != 0:
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        assert default_data_dir() == tmp_path / "tillpoint"
    text = (REPO / doc).read_text(encoding="utf-8")
    for said in re.finditer(r"~/\.local/share/tillpoint", text):
        near = text[max(0, said.start() - 120) : said.end() + 120]
        assert "XDG_DATA_HOME" in near, near


def test_the_error_hierarchy_drawn_in_errors_py_is_every_class_with_its_codes() -> None:
    """ARCHITECTURE.md: "errors.py holds the one rooted hierarchy, drawn in its docstring,
    with each class's exit code and gRPC code". Four classes (`SnapshotCorrupted`,
    `DamagedCache`, `DamagedLedger`, `ReadOnlyData`, the last exit 2 and 412) were not
    drawn: a support engineer reading the table for an exit code found none."""
    import inspect

    from tillpoint.agent import errors

    drawn: dict[str, tuple[str | None, int, str]] = {}
    parents: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^([\s│├└─]*)(\w+)\s+exit (\d)\s+([A-Z_]+)", line)
        if m is None:
            continue
        depth = len(m.group(1))
        parents = [(d, n) for d, n in parents if d < depth]
        drawn[m.group(2)] = (parents[-1][1] if parents else None, int(m.group(3)), m.group(4))
        parents.append((depth, m.group(2)))
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.TillpointError)
    }
    assert set(drawn) == set(classes), (sorted(set(classes) - set(drawn)), sorted(set(drawn)))
    for name, cls in classes.items():
        parent = cls.__mro__[1].__name__ if cls is not errors.TillpointError else None
        assert drawn[name] == (parent, cls.exit_code, cls.grpc_code), name


# Edges and harnesses of sync/ and printer/ that may reach the till application.
EDGES = {"tillpoint.sync.cli", "tillpoint.sync.loopback", "tillpoint.printer.cli"}
HELPERS = ("config", "lock", "snapshot_stream", "grpc_decode", "grpc_health", "advice", "logs")


def test_sync_and_printer_import_of_agent_only_the_core_storage_and_the_named_helpers() -> None:
    """ARCHITECTURE.md: sync/ and printer/ import the core, storage and the helpers it
    names; tests/test_layers.py forbade only the application's modules, so an import of
    `wire`, `metrics` or `forward` from sync/ would have passed unsaid."""
    graph = _graph()
    allowed = {f"tillpoint.agent.{m}" for m in (*CORE, *STORAGE, *HELPERS)}
    wrong = [
        f"{module} imports {name}"
        for module, names in sorted(graph.items())
        if module.startswith(("tillpoint.sync.", "tillpoint.printer.")) and module not in EDGES
        for name in sorted(names)
        if name.startswith("tillpoint.agent.") and name not in allowed
    ]
    assert wrong == []
