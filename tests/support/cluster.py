"""A three-primary Valkey Cluster from the embedded binary, for the streams-on-a-cluster tests."""

from __future__ import annotations

import time
from pathlib import Path

from redis import Redis

from cli.dev.embedded import EmbeddedValkey, free_port

SLOTS = 16384


class EmbeddedValkeyCluster:
    """Three primaries on loopback ports, the 16384 slots split between them; `url` names one."""

    def __init__(self, folder: Path, nodes: int = 3) -> None:
        # The bus port defaults to port + 10000, out of range for a high free port: name it.
        self.bus_ports = [free_port() for _ in range(nodes)]
        self.nodes = [
            EmbeddedValkey(
                folder / f"node{i}",
                persistent=False,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(bus),
                ),
            )
            for i, bus in enumerate(self.bus_ports)
        ]
        self.url = self.nodes[0].url.removesuffix("/0")
        try:
            self._form()
        except BaseException:
            self.stop()
            raise

    def _form(self, timeout: float = 30.0) -> None:
        clients = [Redis(port=node.port) for node in self.nodes]
        share = SLOTS // len(clients)
        for i, client in enumerate(clients):
            last = SLOTS - 1 if i == len(clients) - 1 else (i + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients):
                for client in clients:
                    client.close()
                return
            time.sleep(0.1)
        raise RuntimeError(f"the embedded Valkey cluster did not form within {timeout:.0f}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
