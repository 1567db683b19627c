"""`tillpoint.client`: the typed Python client for a till's `PosAgent` over gRPC.

The short name issue 11 and docs/INTEGRATION.md give it. The code lives in
`tillpoint.agent.client` (beside the agent it calls); these are the same objects, not
copies, so either import works and `isinstance` agrees.
"""

from tillpoint.agent.client import DEFAULT_ADDRESS, RETRYABLE, ClientError, PosAgentClient

__all__ = ["DEFAULT_ADDRESS", "RETRYABLE", "ClientError", "PosAgentClient"]
