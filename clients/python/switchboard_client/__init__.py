"""Python clients for Switchboard: a WebSocket client with reconnect and recovery, and an
HTTP publisher for backend services."""

from switchboard_client.client import ClientClosedError, SwitchboardClient
from switchboard_client.close_codes import should_reconnect
from switchboard_client.publisher import Publisher, PublishError

__all__ = ["ClientClosedError", "PublishError", "Publisher", "SwitchboardClient", "should_reconnect"]
