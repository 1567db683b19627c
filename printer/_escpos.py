"""Lazy, quiet import of python-escpos 3.1.

Importing ``escpos`` has side effects an agent cannot afford at start-up or on its ``--json``
output:

- ``escpos.capabilities`` creates a fresh temporary directory on every import (``mkdtemp()`` is
  evaluated as a default argument even when ``ESCPOS_CAPABILITIES_PICKLE_DIR`` is set) and
  pickles the printer database into it;
- it calls ``logging.basicConfig()``, which installs a handler on the root logger;
- it ``print()``s to stdout when its database cannot be loaded.

So nothing in tillpoint imports ``escpos`` at module level. :func:`load` imports it once, on
demand, with stdout sent to stderr, the pickle directed to a per-user cache directory, the
temporary directory not created, and the root logger left as it was. escpos writes that
pickle in place, so the import holds an flock on the directory (another process read a
half-written file), and a pickle cut short (a process killed mid-write) is written again.

Rendering never reaches the library's other ``print()`` calls: tillpoint always fills in the
profile's media width and dpi and calls the hardware barcode routine directly (see
``layout.py``); a test renders with every profile and asserts stdout stays empty. We do not wrap
calls in ``contextlib.redirect_stdout``: it swaps ``sys.stdout`` for the whole process, so the
print worker's thread would swallow whatever the main thread writes at that moment.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from tillpoint.agent.lock import flock_within

__all__ = ["cache_dir", "load"]

_lock = threading.Lock()
_loaded: ModuleType | None = None


def cache_dir() -> Path | None:
    """Where the escpos capabilities pickle is kept (None: let escpos use a temp directory)."""
    explicit = os.environ.get("TILLPOINT_CACHE_DIR")
    if explicit:
        path = Path(explicit) / "escpos"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "tillpoint" / "escpos"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


_MODULES = ("escpos", "escpos.capabilities", "escpos.constants", "escpos.printer")
LOCK_WAIT_S = 10.0


def _import_all() -> None:
    for name in _MODULES:
        importlib.import_module(name)


@contextlib.contextmanager
def _cache_lock(target: Path | None) -> Iterator[None]:
    """Hold an flock on the cache directory while escpos reads or writes its pickle: it
    writes the file in place, and another process importing it at that moment (a CLI
    command while `run` starts, two agents on one machine) read it half written
    (EOFError). Waits at most LOCK_WAIT_S, then goes on without it."""
    if target is None:
        yield
        return
    try:
        fd = os.open(target / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        flock_within(fd, LOCK_WAIT_S, step_s=0.01)  # not taken in time: on without it
        yield
    finally:
        os.close(fd)  # releases the lock


def load() -> ModuleType:
    """Import python-escpos once, quietly; return the ``escpos`` package.

    Afterwards ``escpos.printer.Dummy``, ``escpos.capabilities`` and ``escpos.constants`` are
    imported too.
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        target = cache_dir()
        real_mkdtemp = tempfile.mkdtemp

        def quiet_mkdtemp(*args: Any, **kwargs: Any) -> str:
            frame: FrameType | None = sys._getframe(1)
            caller = frame.f_globals.get("__name__") if frame is not None else None
            if target is not None and caller == "escpos.capabilities" and not args and not kwargs:
                return str(target)
            return str(real_mkdtemp(*args, **kwargs))

        root = logging.getLogger()
        handlers_before = list(root.handlers)
        env_before = os.environ.get("ESCPOS_CAPABILITIES_PICKLE_DIR")
        try:
            if target is not None and env_before is None:
                os.environ["ESCPOS_CAPABILITIES_PICKLE_DIR"] = str(target)
            tempfile.mkdtemp = quiet_mkdtemp  # type: ignore[assignment]
            with contextlib.redirect_stdout(sys.stderr), _cache_lock(target):
                try:
                    _import_all()
                except (EOFError, pickle.UnpicklingError, ValueError, TypeError):
                    # a pickle cut short (a process killed while writing it): written again
                    for stale in target.glob("*.capabilities.pickle") if target else ():
                        stale.unlink(missing_ok=True)
                    _import_all()
        finally:
            tempfile.mkdtemp = real_mkdtemp
            if env_before is None:  # read at import; do not leak it into child processes
                os.environ.pop("ESCPOS_CAPABILITIES_PICKLE_DIR", None)
            for handler in list(root.handlers):  # a copy: removing while iterating skips one
                if handler not in handlers_before:
                    root.removeHandler(handler)
        _loaded = sys.modules["escpos"]
        return _loaded
