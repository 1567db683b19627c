"""Review 44 (lead): the harness's CI of session 43 failed in `make faults-quick`, its
agent-kill scenario reporting twenty returned receipts "at the hub 0 times".

Its two side-by-side children drew their ports from one pool, each in a random order of
its own: a port could go to both, and then one child's `tillpoint run` exited "Address
already in use" while the other's (the malformed scenario's, with the same card and
products and no hub) answered its checkouts. Those sales were never this scenario's, and
the report read like lost receipts. Shown here with a real foreign `tillpoint run` on the
scenario's port: the report the CI printed before, and the one it prints now; and each
child given a share of the ports of its own.
"""

from __future__ import annotations

import argparse
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import sample_master_data

from bench import faults, ports
from bench.ports import free_port


def test_a_share_of_the_ports_given_by_the_parent_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setenv(ports.SHARE_ENV, "1/2")
    assert ports.worker_share() == (1, 2)
    for bad in ("", "1", "x/2", "1/0", "1/-2"):  # not a share: the worker's, as before
        monkeypatch.setenv(ports.SHARE_ENV, bad)
        assert ports.worker_share() == (1, 3), bad
    monkeypatch.setenv(ports.SHARE_ENV, "5/2")
    assert ports.worker_share() == (1, 2)


def test_side_by_side_children_draw_from_disjoint_shares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # the shares of a parent of
    monkeypatch.delenv(ports.SHARE_ENV, raising=False)  # all the ports (review 44, flake44)
    args = argparse.Namespace(jobs=2, only=None, seed=6, hub_store="sqlite", quick=True, keep=False)
    jobs = faults.side_by_side_jobs(args)
    assert [env[ports.SHARE_ENV] for _, env in jobs] == ["0/2", "1/2"]
    named = [n for cmd, _ in jobs for n in cmd[cmd.index("--only") :] if n != "--only"]
    assert sorted(named) == sorted(faults.SCENARIOS)  # every scenario, once
    drawn = []
    for _, env in jobs:  # what each child hands out, drawn as the child draws
        monkeypatch.setenv(ports.SHARE_ENV, env[ports.SHARE_ENV])
        monkeypatch.setattr(ports, "_cycle", None)
        drawn.append({free_port() for _ in range(40)})
    assert not drawn[0] & drawn[1]


def start_foreign(
    tmp_path: Path,
    port: int,
    start: Callable[[Path, Path], subprocess.Popen[bytes]] = faults.start_agent,
) -> subprocess.Popen[bytes]:
    """A `tillpoint run` of another scenario (the same device name, card and products, no
    hub) on `port`, answering (review 45's walk45 starts it at agent-kill's recovery)."""
    data_dir = tmp_path / "foreign"
    agent = Agent(data_dir, faults.DEVICE)
    agent.load_snapshot(dict(sample_master_data(), version=1, baseVersion=0))
    agent.close()
    cfg = tmp_path / "foreign.toml"
    cfg.write_text(
        f'device_id = "{faults.DEVICE}"\ndata_dir = "{data_dir}"\n[server]\n'
        f'listen = "127.0.0.1:{port}"\n[metrics]\nenabled = false\n[http]\n'
        'listen = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    proc = start(cfg, tmp_path / "foreign.log")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return proc


@pytest.fixture
def foreign_agent(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A `tillpoint run` of another scenario: the same device name, card and products,
    no hub."""
    port = free_port()
    proc = start_foreign(tmp_path, port)
    yield port, proc
    faults.kill(proc)


def test_agent_kill_says_another_program_s_agent_answered_on_its_port(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    foreign_agent: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = foreign_agent
    monkeypatch.setattr(faults, "free_port", lambda: port)  # the port the other child drew
    work = tmp_path / "agent-kill"
    work.mkdir()
    out = faults.scenario_agent_kill(work, 2, random.Random(1))
    assert not out.ok
    assert all(f"the agent on port {port} is not ours" in b for b in out.broken), out.broken
    # before: "receipt k-N is at the hub 0 times", twenty times, the cause unsaid
    assert not any("is at the hub 0 times" in b for b in out.broken), out.broken
    assert out.counts["checkouts returned"] == 0  # the foreign agent sold nothing of ours


# --------------------------------------------------------------- a page without Cyrillic


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("ЯБЛОКИ -20%", "IABLOKI -20%"),  # was "IaBLOKI"
        ("БОРЩ И ЩИ", "BORSHCH I SHCHI"),
        ("ОБЪЯВЛЕНИЕ", "OBIAVLENIE"),
        ("СКИДКА НА ЖК", "SKIDKA NA ZHK"),
        ("Яблоки", "Iabloki"),  # a word with a capital first: as before
        ("Щи и Юля", "Shchi i Iulia"),
        ("Я", "Ia"),  # a word of one capital: as before
        ("ЖК-телевизор", "ZHK-televizor"),
        ("ІЛИЯС", "ILIIAS"),  # review 42's example: was "ILIIaS"
    ],
)
def test_a_capital_in_a_word_in_capitals_is_written_in_capitals(text: str, printed: str) -> None:
    from tillpoint.printer.text import degrade

    assert degrade(text, "ascii") == printed
    # a page with Cyrillic prints it as it is (but the Ukrainian І CP866 lacks: Latin I)
    assert degrade(text, "cp866") == text.replace("І", "I")
