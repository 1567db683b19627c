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
temporary directory not created, and the root logger left as it was.

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
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

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
            with contextlib.redirect_stdout(sys.stderr):
                for name in ("escpos", "escpos.capabilities", "escpos.constants", "escpos.printer"):
                    importlib.import_module(name)
        finally:
            tempfile.mkdtemp = real_mkdtemp
            if env_before is None:  # read at import; do not leak it into child processes
                os.environ.pop("ESCPOS_CAPABILITIES_PICKLE_DIR", None)
            for handler in root.handlers:
                if handler not in handlers_before:
                    root.removeHandler(handler)
        _loaded = sys.modules["escpos"]
        return _loaded
