"""Print the runtime subset of requirements.lock for the wheels in a directory.

`build-deb.sh` downloads tillpoint's dependencies with the lock as constraints; this
checks that every wheel is a pin of the lock (a dependency the lock does not pin would
ship an untested version) and prints `name==version` for each, which the package installs
as constraints. pip is left out: the venv brings its own.

    python packaging/runtime_lock.py requirements.lock WHEEL_DIR > runtime.lock
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

EXEMPT = {"pip", "tillpoint"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    out = {}
    for raw in lock.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonical(name)] = version.strip()
    return out


def main(argv: list[str]) -> int:
    lock, wheel_dir = Path(argv[1]), Path(argv[2])
    pinned = pins(lock)
    found: dict[str, str] = {}
    wrong = []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        key = canonical(name)
        if key in EXEMPT:
            continue
        if pinned.get(key) != version:
            wrong.append(f"{wheel.name} (requirements.lock: {pinned.get(key, 'not pinned')})")
        found[key] = version
    if wrong:
        print("runtime_lock: not the tested pins: " + ", ".join(wrong), file=sys.stderr)
        return 1
    for key in sorted(found):
        print(f"{key}=={found[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
