"""Python clients for Switchboard: a WebSocket client with reconnect and recovery, and an
HTTP publisher for backend services."""

from switchboard_client.client import (
    ClientClosedError,
    PresenceError,
    SendQueueFullError,
    SwitchboardClient,
)
from switchboard_client.close_codes import should_reconnect
from switchboard_client.publisher import Event, Publisher, PublishError, StreamPublisher

__all__ = [
    "ClientClosedError", "Event", "PresenceError", "PublishError", "Publisher", "SendQueueFullError",
    "StreamPublisher",
    "SwitchboardClient", "should_reconnect",
]
