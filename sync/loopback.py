"""A hub and its tills on one machine, over loopback mTLS: for the demo and the tests.

Everything is real: the hub's SQLite store and keys in a directory, a gRPC server on
127.0.0.1 with a random port, enrolment bundles installed into each till's data
directory, and the same `SyncService` and `HubAuthoriser` that `tillpoint run` starts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tillpoint.agent.app import till_agent
from tillpoint.agent.service import Agent, DeviceNotifier

from . import pki
from .authoriser import HubAuthoriser
from .client import HubLink
from .hub_import import read_json
from .hub_server import HubConfig, HubDir, HubServer, system_clock
from .service import SyncService, SyncTimings

SAMPLE: dict[str, Any] = {
    "program": {
        "currency": "RUB",
        "timezone": "Europe/Moscow",
        "pointValueMinor": 100,
        "maxRedeemPercent": 30,
        "activationDelayDays": 0,
        "offlineRedeemLimitPoints": 500,
        "tiers": [
            {"code": "base", "accrualPercent": "3"},
            {"code": "gold", "accrualPercent": "7"},
        ],
    },
    "categories": [
        {"code": "food", "name": "Продукты"},
        {"code": "dairy", "parent": "food", "name": "Молочные продукты"},
    ],
    "products": [
        {"sku": "4601234000017", "name": "Молоко 3,2% 1 л", "category": "dairy"},
        {"sku": "4601234000024", "name": "Кефир 1 л", "category": "dairy"},
        {
            "sku": "4601234000031",
            "name": "Сигареты",
            "category": "tobacco",
            "excludedFromLoyalty": True,
        },
    ],
    "customers": [
        {
            "id": "c-1",
            "firstName": "Анна",
            "tier": "gold",
            "phone": "+79161234567",
            "balancePoints": 1200,
            "segment": "ACTIVE",
        },
        {"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 300, "segment": "NEW"},
    ],
    "cards": [
        {"number": "2770000000017", "customerId": "c-1", "status": "ACTIVE"},
        {"number": "2770000000024", "customerId": "c-2", "status": "ACTIVE"},
    ],
    "offers": [],
}


def sample_master_data() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE)


def import_doc(store: Any, doc: dict[str, Any]) -> None:
    """Import a snapshot-shaped dict (as `hub import` would read it from a file)."""
    import io
    import json

    raw = json.dumps(doc).encode()
    store.import_rows(read_json(io.BytesIO(raw), len(raw), None))


@dataclass
class Till:
    device_id: str
    data_dir: Path
    agent: Agent
    link: HubLink
    service: SyncService | None
    authoriser: HubAuthoriser

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        else:
            self.link.close()
        self.authoriser.close()
        self.agent.close()


FAST = SyncTimings(
    call_timeout_s=2.0,
    redeem_timeout_s=0.3,
    poll_interval_s=30.0,
    push_check_s=0.1,
    stream_timeout_s=30.0,
    subscribe_max_s=60.0,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
)


# How long `LoopbackHub.till` waits for a new till's channel to a running hub.
CONNECT_WAIT_S = 5.0


class LoopbackHub:
    """A running reference hub in `root`, plus helpers to enrol tills."""

    def __init__(
        self,
        root: Path,
        config: HubConfig | None = None,
        *,
        clock: Callable[[], datetime] = system_clock,
        data: dict[str, Any] | None = None,
        publish: bool = True,
        start: bool = True,
        store: str | None = None,
        snapshot_ttl_s: float = 7 * 86400.0,
    ) -> None:
        """`store`: the hub's store (a PostgreSQL URL, or a SQLite file; default:
        $TILLPOINT_HUB_STORE, else hub.db in `root`). `snapshot_ttl_s`: how long what
        `publish` publishes is valid from the hub's clock. A test's hub on a fixed day
        whose tills pull (they verify a snapshot on the wall clock) gives it years, or its
        snapshot expires a week after that day and the test fails from then on (review
        54: five files would have failed so from 7 December 2026, 18:00 UTC;
        tests/test_review54_lead.py guards the pattern)."""
        self.root = Path(root)
        self.snapshot_ttl_s = snapshot_ttl_s
        self.config = config or HubConfig(heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
        self.clock = clock
        self.dir = HubDir(self.root, store)
        self.dir.init()
        self.dir.open_store(migrate=True).close()  # what `hub init` does
        self.server = HubServer(self.dir, self.config, clock=clock)
        if data is not None:
            import_doc(self.server.store, data)
        if publish and data is not None:
            self.publish()
        self.port = 0
        if start:
            self.start()

    def start(self) -> None:
        self.port = self.server.start(f"127.0.0.1:{self.port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store(self) -> Any:
        return self.server.store

    def publish(self, ttl_s: float | None = None) -> int:
        """Publish the store's data at the hub's clock, valid `ttl_s` (default: the hub's
        `snapshot_ttl_s`, a week)."""
        ttl = self.snapshot_ttl_s if ttl_s is None else ttl_s
        pub = self.server.store.publish(self.clock(), ttl)
        self.server.notifier.update(pub)
        return pub.version

    def enroll(self, device_id: str, data_dir: Path) -> pki.Enrollment:
        identity = pki.issue_device(self.dir.keys, device_id)
        self.server.store.enroll(device_id, identity.fingerprint, datetime.now(UTC))
        bundle = pki.make_bundle(self.dir.keys, identity, self.address)
        return pki.install_bundle(Path(data_dir), bundle, device_id)

    def till(
        self,
        device_id: str,
        data_dir: Path,
        *,
        timings: SyncTimings = FAST,
        start: bool = True,
        clock: Callable[[], datetime] | None = None,
        devices: DeviceNotifier | None = None,
    ) -> Till:
        """Enrol a till and start its sync the way `tillpoint run` does: its agent built by
        `app.till_agent`, with the hub's authoriser and its `devices` (None: none)."""
        enrollment = self.enroll(device_id, data_dir)
        link = HubLink(self.address, enrollment)
        if self.server.serving:
            # the handshake done before the till's first hold, which FAST's 300 ms deadline
            # otherwise also had to cover (a loaded machine's first hold on a fresh
            # connection went OFFLINE; review 52's exp27 flake). A till of `tillpoint run`
            # starts connecting at once too; its first hold usually comes a while later.
            link.connected(CONNECT_WAIT_S)
        authoriser = HubAuthoriser(link, Path(data_dir), device_id, timings.redeem_timeout_s)
        agent = till_agent(
            Path(data_dir),
            device_id,
            clock=clock,
            hub=authoriser,
            devices=devices,
        )
        service = None
        if start:
            service = SyncService(agent, link, enrollment, timings)
            service.start()
        return Till(device_id, Path(data_dir), agent, link, service, authoriser)

    def stop(self) -> None:
        self.server.stop(grace=0)

    def restart(self, config: HubConfig | None = None) -> None:
        """Stop and start again on the same port, with a fresh store connection."""
        self.server.stop(grace=0)
        self.server = HubServer(self.dir, config or self.config, clock=self.clock)
        self.port = self.server.start(f"127.0.0.1:{self.port}")


def timings(**changes: Any) -> SyncTimings:
    return replace(FAST, **changes)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; raise TimeoutError otherwise."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(every)


def receipt(
    receipt_id: str,
    card: str,
    *,
    at: datetime | None = None,
    redeem: int = 0,
    lines: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A receipt JSON (the contract §5) for the sample catalogue."""
    moment = at or datetime.now(UTC)
    return {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": moment.isoformat(),
        "card": card,
        "lines": lines or [{"sku": "4601234000017", "qty": "2", "priceMinor": 8990}],
        "redeemPoints": redeem,
    }
