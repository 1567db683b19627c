"""Review 60 (rev60): a second reading of session 60's changes (docs/DECISIONS.md,
"Review 60 (rev60)").

mut60b made `PosAgentClient` refuse, when it is made, a token "no agent can have": one
with a blank inside, over 512 characters, and (by its `token.strip`) None. An agent
without a token takes every call whatever its metadata says, so a POS that passed such a
token to a loopback agent worked before and stopped at its start on upgrade
(`ValueError`; `AttributeError` for `token=os.environ.get(...)` unset). Only what gRPC
cannot carry at all (a control character inside, a letter beyond ASCII: INTERNAL at every
call before) is refused now. Real gRPC servers of a real agent on 127.0.0.1
(`conftest.grpc_served`).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tillpoint.agent.service import Agent
from tillpoint.client import ClientError, PosAgentClient

from .conftest import grpc_served

# printable ASCII, so gRPC sends them, but no agent's `[server] token` (config.Token)
NOT_AN_AGENTS = ["my token", "Bearer s3cret", "t" * 600]
# what grpcio refuses in metadata at every call ("Invalid metadata", INTERNAL)
UNSENDABLE = ["s3crét", "s3\x00cret", "s3\ncret", "s3\tcret"]


def status_with(port: int, token: Any) -> str:
    """The agent's device id, asked with `token`; the ClientError's code name otherwise."""
    with PosAgentClient(f"127.0.0.1:{port}", token=token, timeout=30) as till:
        try:
            return str(till.status()["deviceId"])
        except ClientError as exc:
            return exc.code.name


def test_a_token_an_agent_without_one_ignored_still_reaches_it(agent: Agent) -> None:
    """An agent without a token answers a client whose token is None (unset in the POS's
    environment), has a blank inside or is long, as before session 60; an agent with the
    token `s3cret` refuses them UNAUTHENTICATED, its own word for a wrong token, and takes
    `s3cret` with a file's newline."""
    with grpc_served(agent) as port:
        for token in [None, "", *NOT_AN_AGENTS, "s3cret\n"]:
            assert status_with(port, token) == "till-1", repr(token)
    with grpc_served(agent, token="s3cret") as port:
        for token in [None, "", *NOT_AN_AGENTS]:
            assert status_with(port, token) == grpc.StatusCode.UNAUTHENTICATED.name, repr(token)
        assert status_with(port, "s3cret\n") == "till-1"


def test_a_token_grpc_cannot_carry_is_refused_when_the_client_is_made() -> None:
    """A control character inside or a letter beyond ASCII: no call could carry it
    (INTERNAL "Invalid metadata" at every call until review 60), so the client refuses
    it at once, saying why."""
    for token in UNSENDABLE:
        with pytest.raises(ValueError, match="printable ASCII") as refused:
            PosAgentClient("127.0.0.1:1", token=token)
        assert token not in str(refused.value)  # a secret stays out of logs
