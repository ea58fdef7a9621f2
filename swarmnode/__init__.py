"""swarmnode: a peer-to-peer node replicating blobs and events across a swarm (ActyxOS 1.x APIs)."""

__version__ = "0.1.0"
