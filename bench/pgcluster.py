"""A throwaway PostgreSQL cluster for tests and benchmarks (Debian's `postgresql`).

`initdb` + `pg_ctl start` into a temporary directory, on 127.0.0.1 and a free port, as
the `postgres` user when run as root (the server refuses to run as root), stopped and
deleted by `stop()`. Nothing of the machine's own clusters is touched.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench.ports import free_port

START_TIMEOUT_S = 60
START_ATTEMPTS = 5  # ports tried when another program takes the picked one first
# the server's log when its port is taken ("could not bind IPv4 address ...: Address
# already in use", then "could not create any TCP/IP sockets")
PORT_TAKEN = re.compile(r"could not bind|Address already in use|could not create any TCP/IP")


def server_bin() -> Path | None:
    """The newest installed server's bin directory, or None when there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable_reason() -> str | None:
    if server_bin() is None:
        return "PostgreSQL server not installed (`make deps-system` installs Debian's postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as a non-root user"
    return None


def _read_from(log: Path, offset: int) -> str:
    """What the server's log says from `offset` on ("" when there is no log)."""
    try:
        with log.open("rb") as text:
            text.seek(offset)
            return text.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _free_port() -> int:
    """Below the ephemeral range (bench/ports.py): a port-0 pick was taken by an outgoing
    connection before the cluster bound it, under a loaded run."""
    return free_port()


MEMORY_DIR = "/dev/shm"
MEMORY_FREE_MIN = 8 << 30  # a whole test run's cluster is ~1-2 GB


def _memory_dir() -> str | None:
    """/dev/shm when it is a writable tmpfs with room to spare, else None (the system's
    temporary directory: a container's 64 MB /dev/shm, for one, is not used)."""
    try:
        if not os.access(MEMORY_DIR, os.W_OK):
            return None
        st = os.statvfs(MEMORY_DIR)
    except OSError:
        return None
    return MEMORY_DIR if st.f_bavail * st.f_frsize >= MEMORY_FREE_MIN else None


class Cluster:
    def __init__(
        self, *, durable: bool = False, max_connections: int = 300, in_memory: bool = False
    ) -> None:
        """`durable`: fsync, synchronous_commit and full_page_writes on (benchmarks);
        off by default (tests: a throwaway cluster need not survive a power cut).
        `in_memory` (the test suite's): in /dev/shm when it has room (`_memory_dir`)."""
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError(unavailable_reason() or "no PostgreSQL")
        self.bin = bindir
        # The test suite's cluster lives in memory where there is room (review 39: its
        # rmtree on a loaded machine's disk, waiting on the writeback of what the tests
        # wrote with fsync off, took 47-69 s at the end of a CI run); benchmarks' on disk.
        where = _memory_dir() if in_memory and not durable else None
        self.root = Path(tempfile.mkdtemp(prefix="tillpoint-pg-", dir=where))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self.durable = durable
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            self._start(max_connections)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)  # never left behind half-made
            raise
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _start(self, max_connections: int) -> None:
        """`pg_ctl start` on `self.port`; on a new port when another program took that one
        between its pick and the server's bind (the server's log says "could not bind"), at
        most `START_ATTEMPTS` times (review 44: before, the cluster, and every PostgreSQL
        test of the run with it, failed)."""
        on = "on" if self.durable else "off"
        for attempt in range(1, START_ATTEMPTS + 1):
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                f" -c max_connections={max_connections} -c fsync={on}"
                f" -c synchronous_commit={on} -c full_page_writes={on} -c shared_buffers=256MB"
                " -c max_wal_size=4GB -c checkpoint_timeout=15min"
            )
            log = self.root / "server.log"
            told = log.stat().st_size if log.exists() else 0
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                )
                return
            except RuntimeError as exc:
                said = _read_from(log, told)
                if attempt == START_ATTEMPTS or not PORT_TAKEN.search(said):
                    raise RuntimeError(f"{exc}\n{said.strip()[-2000:]}") from None
                self.port = _free_port()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")

    def new_database(self, prefix: str = "hub") -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            # A throwaway cluster copies the template's files (PostgreSQL 15+): its default,
            # WAL_LOG, writes every page of the template into the WAL too, which a cluster
            # with a 4 GB max_wal_size kept (150 databases: 1.6 GB, 625 MB of it WAL, not
            # 1.1 GB and 17 MB), and `stop()`'s rmtree of it took 47-69 s at the end of a
            # loaded CI run (review 39).
            file_copy = not self.durable and conn.info.server_version >= 150000
            strategy = " STRATEGY FILE_COPY" if file_copy else ""
            conn.execute(f'CREATE DATABASE "{name}"{strategy}'.encode())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
