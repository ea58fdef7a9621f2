"""Composes the node's parts and runs them: identity, event log, blob store, HTTP APIs, swarm.

``Node.start`` binds every listener (port 0 allowed) and writes ``<data-dir>/node.json`` with the
bound addresses, so tooling and tests can find a node started on ephemeral ports. ``Node.stop``
undoes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from swarmnode.api.blobs_app import make_blobs_app
from swarmnode.api.events_app import make_events_app
from swarmnode.api.status import add_status_route
from swarmnode.config import Config, HostPort
from swarmnode.events.log import EventLog
from swarmnode.identity import load_or_create_identity, load_or_create_swarm_key
from swarmnode.store.service import BlobService
from swarmnode.swarm.driver import SwarmDriver, config_from_env
from swarmnode.swarm.transfer import BlobTransfers
from swarmnode.swarm.transfer_config import transfer_config_from_env
from swarmnode.swarm.transport import SwarmTransport

__all__ = ["NODE_FILE", "Node", "NodeAddresses"]

log = logging.getLogger(__name__)

NODE_FILE = "node.json"


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    events_api: HostPort
    blobs_api: HostPort
    swarm: HostPort


def _bound(site: web.TCPSite) -> HostPort:
    server = (
        site._server
    )  # aiohttp keeps the asyncio server here; the only way to learn port 0's choice
    # uvloop's Server is not an asyncio.base_events.Server, but it has the same ``sockets``.
    sockets = getattr(server, "sockets", None)
    assert sockets, "the site is not serving"
    host, port = sockets[0].getsockname()[:2]
    return HostPort(host, port)


class Node:
    """One swarmnode. ``await start()``, then ``await stop()`` (or ``async with``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(self.data_dir)
        if config.swarm_key is not None:
            self.swarm_key = config.swarm_key
        else:
            self.swarm_key, created = load_or_create_swarm_key(self.data_dir)
            if created:
                log.info(
                    "swarm_key.created",
                    extra={
                        "path": str(self.data_dir / "swarm.key"),
                        "hint": "give every node of this swarm the same key: "
                        f"--swarm-key @{self.data_dir / 'swarm.key'}",
                    },
                )
        self.events = EventLog(self.data_dir / "events.sqlite", self.identity)
        self.blobs = BlobService(self.data_dir / "blobs", self.events, config)
        self._runners: list[web.AppRunner] = []
        self.addresses: NodeAddresses | None = None
        self.driver = SwarmDriver(
            swarm_key=self.swarm_key,
            identity=self.identity,
            event_log=self.events,
            config=config_from_env(os.environ),
        )
        self.swarm: SwarmTransport = self.driver.transport
        self.transfers = BlobTransfers(
            blobs=self.blobs, driver=self.driver, config=transfer_config_from_env(os.environ)
        )

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    async def start(self) -> NodeAddresses:
        await self.events.start()
        await self.blobs.start()
        events_app = make_events_app(self.events, self.config)
        add_status_route(events_app, self.driver)
        events_site = await self._serve(events_app, self.config.events_api)
        blobs_site = await self._serve(
            make_blobs_app(self.blobs, self.config), self.config.blobs_api
        )
        swarm = await self.swarm.listen(self.config.listen.host, self.config.listen.port)
        await self.transfers.start()
        await self.driver.start(swarm, self.config.peers)
        self.addresses = NodeAddresses(_bound(events_site), _bound(blobs_site), swarm)
        self._write_node_file()
        log.info(
            "node.started",
            extra={
                "node_id": self.node_id,
                "events_api": str(self.addresses.events_api),
                "blobs_api": str(self.addresses.blobs_api),
                "swarm": str(self.addresses.swarm),
                "peers": [str(p) for p in self.config.peers],
                "data_dir": str(self.data_dir),
            },
        )
        return self.addresses

    async def _serve(self, app: web.Application, where: HostPort) -> web.TCPSite:
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            # A client that hangs up cancels its handler, so a waiting subscription is freed.
            handler_cancellation=True,
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, where.host, where.port, reuse_address=True)
        await site.start()
        return site

    def _write_node_file(self) -> None:
        assert self.addresses is not None
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "nodeId": self.node_id,
            "eventsApi": str(self.addresses.events_api),
            "blobsApi": str(self.addresses.blobs_api),
            "swarm": str(self.addresses.swarm),
        }
        tmp = self.data_dir / (NODE_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.data_dir / NODE_FILE)

    async def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / NODE_FILE).unlink()
        await self.driver.stop()
        await self.transfers.stop()
        await self.swarm.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.blobs.stop()
        await self.events.stop()
        log.info("node.stopped", extra={"node_id": self.node_id})

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def node_file(data_dir: Path) -> Path:
    return data_dir / NODE_FILE
