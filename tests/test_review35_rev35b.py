"""Review 35, second pair of eyes (rev35b): faults left by review 35's own changes
(CONTRACT §10, §12). Each test marked so failed before the fix beside it; the others keep
what was found right. Real parts: real listening sockets held by other processes, real
gRPC servers (the agent's and the hub's) on 127.0.0.1 and ::1, the kernel's own tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import config

from .conftest import free_port, needs_ipv6

# ---------------------------------------- 1. another program on the gRPC port

# Another program: listens on HOST (IPv6 with V6ONLY as told) on a port of its own, says
# the port, and holds it until its stdin closes.
# The port comes from `free_port` (below the ephemeral range): the tests then bind the
# same number on another address, which an outgoing connection's end held once when the
# holder took the kernel's pick (CI, review 43: "0.0.0.0:32885: Address already in use").
_HOLDER = """
import socket, sys
host, v6only, port = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
try:
    s.bind((host, port))
except OSError:
    print(0, flush=True)
    sys.exit(0)
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder() -> Iterator[Any]:
    """Start another program listening on HOST; its port. Ended with the test."""
    started: list[subprocess.Popen[bytes]] = []

    def listen(host: str, *, v6only: bool = True) -> int:
        for _ in range(20):  # a port taken since `free_port` looked: the next one
            proc = subprocess.Popen(
                [sys.executable, "-c", _HOLDER, host, "1" if v6only else "0", str(free_port())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            started.append(proc)
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            if port:
                return port
        raise AssertionError(f"no free port to listen on {host}")

    yield listen
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


# (the agent's listen host, the other program's host): another address of the host, or
# the wildcard of the other family (IPv6 with V6ONLY; IPv4), which takes none of the
# agent's connections: the agent binds its own address whole beside them.
BESIDE = [
    pytest.param("127.0.0.1", "127.0.0.2", id="other-ipv4-address"),
    pytest.param("127.0.0.1", "::", marks=needs_ipv6, id="ipv6-only-wildcard"),
    pytest.param("127.0.0.1", "::1", marks=needs_ipv6, id="ipv6-loopback"),
    pytest.param("[::1]", "0.0.0.0", marks=needs_ipv6, id="ipv4-wildcard"),
    pytest.param("[::1]", "127.0.0.1", marks=needs_ipv6, id="ipv4-loopback"),
]


@pytest.mark.parametrize(("host", "other"), BESIDE)
def test_grpc_starts_on_its_address_beside_another_program_on_another_address(
    tmp_path: Path, holder: Any, host: str, other: str
) -> None:
    """CONTRACT §10 (`[server] listen`; a port another program holds). Review 35 made the
    agent refuse to start when another program listens on its gRPC port on an address of
    the host, and counted both wildcards as such an address for every listen address: a
    till on 127.0.0.1 beside a program holding [::]:PORT IPv6-only (Go's "tcp6", nginx's
    `listen [::]:PORT`), or on [::1] beside one on 0.0.0.0:PORT, was refused ("[::]:PORT
    is another program's"), exit 1 for ever, though the kernel gave the agent its whole
    address and none of the POS's connections to it can reach that program. Only an
    address the agent's listen covers, or the wildcard of its family, counts."""
    from tillpoint.agent import server as server_module
    from tillpoint.agent.service import Agent

    port = holder(other)
    agent = Agent(tmp_path / "data", "till-1")
    try:
        server, bound, _ = server_module.build_server(agent, f"{host}:{port}")
        try:
            assert bound == port
        finally:
            server.stop(None).wait(5)
    finally:
        agent.close()


@pytest.mark.parametrize(("host", "other"), BESIDE)
def test_the_hub_starts_on_its_address_beside_another_program_on_another_address(
    tmp_path: Path, holder: Any, host: str, other: str
) -> None:
    """CONTRACT §10: the same for `hub serve` (`HubServer.start`), which asks the same."""
    from tillpoint.sync.loopback import LoopbackHub

    port = holder(other)
    hub = LoopbackHub(tmp_path / "hub", start=False)
    try:
        assert hub.server.start(f"{host}:{port}") == port
    finally:
        hub.server.stop()


@needs_ipv6
@pytest.mark.parametrize(
    ("host", "other", "said"),
    [
        ("localhost", "::", "[::]"),  # ::1 is localhost's: half-bound, refused
        ("localhost", "::1", "[::1]"),
        ("[::]", "::", "[::]"),
    ],
)
def test_another_program_on_an_address_of_the_listen_still_counts(
    holder: Any, host: str, other: str, said: str
) -> None:
    """CONTRACT §10: what review 35 refuses stays refused: an address of the listen's
    host, or the wildcard of a family it listens in."""
    port = holder(other)
    assert config.others_listening(f"{host}:{port}", port) == [f"{said}:{port}"]


def test_an_ipv4_program_is_found_on_a_kernel_without_ipv6(
    holder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10. A kernel without IPv6 (`ipv6.disable=1`) has no /proc/net/tcp6: its
    absence ended the look with "nobody", and the IPv4 table's finding read just before
    was dropped with it. Each table is read on its own now."""
    port = holder("127.0.0.1")
    monkeypatch.setattr(config, "_PROC_TCP", ("/proc/net/tcp", "/proc/net/tcp6-absent"))
    assert config.others_listening(f"127.0.0.1:{port}", port) == [f"127.0.0.1:{port}"]


def test_only_listening_rows_on_the_port_are_looked_at_among_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: a busy host's table (tens of thousands of connections) costs one
    pass: only the rows that listen on the port are parsed as addresses (counted, not
    timed); a connection on the port in TIME_WAIT or CLOSE_WAIT is nobody's listener."""
    port = 50061
    head = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
    )

    def row(n: int, address: str, state: str, inode: int) -> str:
        return (
            f"{n:4}: {address} 0100007F:D431 {state} 00000000:00000000 00:00000000"
            f" 00000000  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
        )

    lo = "0100007F"
    rows = [row(i, f"{lo}:{1024 + i % 40000:04X}", "01", 100000 + i) for i in range(30000)]
    rows += [row(30000 + i, f"{lo}:{port:04X}", s, 200000 + i) for i, s in enumerate(["06", "08"])]
    rows.append(row(30002, f"{lo}:{port:04X}", "0A", 300000))
    table = tmp_path / "tcp"
    table.write_text(head + "".join(rows), encoding="ascii")
    empty = tmp_path / "tcp6"
    empty.write_text(head, encoding="ascii")
    monkeypatch.setattr(config, "_PROC_TCP", (str(table), str(empty)))
    parsed: list[str] = []
    parse = config._proc_address

    def counted(text: str) -> Any:
        parsed.append(text)
        return parse(text)

    monkeypatch.setattr(config, "_proc_address", counted)
    assert config.others_listening(f"127.0.0.1:{port}", port) == [f"127.0.0.1:{port}"]
    assert parsed == [lo]


# ---------------------------------------- 2. storageError: what the document promises


def test_the_document_says_storage_error_clears_when_a_sale_is_stored() -> None:
    """CONTRACT §10, §12. Review 35 made `storageError` clear only when a sale is stored
    (a cancel or the hold timer's small write that works proves nothing for sales), but
    the .proto's comment, which is what /openapi.json and a generated client tell an
    integrator, still said "until a write works again; "" when the last write worked",
    and /healthz's said only "while the ledger cannot be written": a POS's support screen
    built on them read a till that cancelled one receipt as well again."""
    from tillpoint.agent.http_api import openapi

    doc = openapi()
    status = doc["components"]["schemas"]["Status"]["properties"]
    healthz = doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]
    for said in (
        status["storageError"]["description"],
        healthz["application/json"]["schema"]["properties"]["storageError"]["description"],
    ):
        assert "sale is stored" in said, said
        assert "write works" not in said and "last write worked" not in said, said


def test_storage_error_stays_at_answers_from_what_is_stored_and_a_refund_stored_clears_it(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (kept right): on a ledger that cannot grow, a Checkout, Confirm or
    Refund retried with its stored answer writes nothing and leaves `storageError`; with
    room again, a refund stored leaves it too (review 36: a refund's rows still fit a
    ledger too full for a sale's, `tests/test_review36_rev36a.py`), a sale stored
    clears it."""
    from tillpoint.agent.errors import StorageError
    from tillpoint.agent.results import receipt_from_json, refund_from_json
    from tillpoint.agent.service import Agent

    from .conftest import receipt as a_sale
    from .conftest import snapshot

    def refund(refund_id: str) -> Any:
        return refund_from_json(
            {
                "refundId": refund_id,
                "receiptId": "sold",
                "at": "2026-11-23T11:00:00+03:00",
                "lines": [{"sku": "4601234000017", "qty": "1"}],
            }
        )

    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        assert agent.checkout(receipt_from_json(a_sale("sold"))).state == "CONFIRMED"
        assert agent.hold(receipt_from_json(a_sale("held"))).state == "HELD"
        assert agent.confirm("held").state == "CONFIRMED"
        first = agent.refund(refund("ref-1"))
        pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
        agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        for i in range(500):
            try:
                agent.checkout(receipt_from_json(a_sale(f"full-{i}")))
            except StorageError:
                break
        said = agent.status().to_json()["storageError"]
        assert "disk is full" in said
        assert agent.checkout(receipt_from_json(a_sale("sold"))).state == "CONFIRMED"
        assert agent.confirm("held").state == "CONFIRMED"
        assert agent.refund(refund("ref-1")) == first
        assert agent.status().to_json()["storageError"] == said
        agent._ledger.execute("PRAGMA max_page_count = 1073741823")
        assert agent.refund(refund("ref-2")).refund_id == "ref-2"
        assert agent.status().to_json()["storageError"] == said
        assert agent.checkout(receipt_from_json(a_sale("after"))).state == "CONFIRMED"
        assert agent.status().to_json()["storageError"] == ""
    finally:
        agent.close()


@needs_ipv6
def test_localhost_without_ipv6_loopback_starts_beside_an_ipv6_only_wildcard(
    holder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10. A till whose loopback has no ::1 (IPv6 off on `lo`, on a host that
    has it elsewhere) listens on `localhost` as 127.0.0.1 alone, as grpcio does, and no
    POS can reach it over ::1; another program on [::]:PORT IPv6-only takes none of its
    connections, yet it was counted (`::1` was taken as the listen's whatever the host
    had), and such a till never started. The test cannot take ::1 off this host's
    loopback: the one kernel answer stubbed is "::1 does not bind here"."""
    port = holder("::")
    real = config._bindable

    def no_ipv6_loopback(ip: Any) -> bool:
        return ip.version != 6 and real(ip)

    assert config.others_listening(f"localhost:{port}", port) == [f"[::]:{port}"]
    monkeypatch.setattr(config, "_bindable", no_ipv6_loopback)
    assert config.others_listening(f"localhost:{port}", port) == []


# ---------------------------------------- 6. /openapi.json from an installed package


@pytest.mark.slow  # a wheel built and read from outside the checkout: ~5 s
def test_an_installed_wheel_serves_the_same_document_with_its_examples(tmp_path: Path) -> None:
    """CONTRACT §12 (kept right): the examples file ships in the wheel, and a package
    installed from it (not the checkout) gives the same document, examples and all,
    byte for byte, whatever the interpreter's hash seed."""
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path, repo],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tillpoint-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    show = (
        "import sys, tillpoint.agent.http_api as h\n"
        "from tillpoint.agent.cli import json_document\n"
        "d = h.openapi()\n"
        "assert h.__file__.startswith(sys.argv[1]), h.__file__\n"
        "e = d['paths']['/v1/quote']['post']['requestBody']['content']['application/json']\n"
        "assert e['examples'], 'no examples'\n"
        "sys.stdout.write(json_document(d))\n"
    )
    documents = set()
    for seed, where in (("0", site), ("12345", site), ("random", repo)):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(where)}
        done = subprocess.run(
            [sys.executable, "-c", show, str(where)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        documents.add(done.stdout)
    assert len(documents) == 1
