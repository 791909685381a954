"""The edge's reads of the history tier, as domain `HistoryPage`s.

`HistoryClient` (services/common) is shared with the routers and speaks protobuf; the edge
reads through this adapter, so that the hub and connections never see generated code.
"""

from __future__ import annotations

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryClient
from services.edge.domain import HistoryPage, StoredEvent


class HistoryReader:
    def __init__(self, client: HistoryClient) -> None:
        self.client = client

    async def read(self, channel: str, since_offset: int, *, epoch: str = "", limit: int = 0,
                   latest: bool = False) -> HistoryPage:
        """The events after `since_offset` (or the newest `limit` with `latest`); with `epoch`,
        `epoch_changed` tells that the channel's epoch is another one. Raises HistoryCallError."""
        got = await self.client.read(channel, since_offset, epoch=epoch, limit=limit, latest=latest)
        return page_of(got)

    async def healthy(self, timeout_s: float) -> bool:
        return await self.client.healthy(timeout_s=timeout_s)


def page_of(got: hpb.ReadResponse) -> HistoryPage:
    return HistoryPage(
        epoch=got.epoch, top_offset=got.top_offset, first_offset=got.first_offset,
        epoch_changed=got.epoch_changed, complete=got.complete,
        events=[StoredEvent(ev.offset, ev.frame, ev.priority) for ev in got.events])
