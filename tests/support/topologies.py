"""Real multi-node Redis deployments for tests: a 3-primary Cluster, a primary with a
replica watched by a Sentinel. Each node is a redis-server child in its own folder."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from embedstream.redis_server import RedisServer, free_port


class Cluster:
    """Three primaries (no replicas) forming one Redis Cluster on 127.0.0.1."""

    def __init__(self, root: Path, primaries: int = 3) -> None:
        self.nodes = [
            RedisServer(
                root / f"node{i}",
                appendonly=True,
                options={
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": "2000",
                    # The bus port defaults to port + 10000, past 65535 for a high free port.
                    "cluster-port": str(free_port()),
                },
            )
            for i in range(primaries)
        ]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [_cli(), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = redis.Redis(port=self.nodes[0].port).cluster("info")
            if info.get("cluster_state") == "ok":
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach state ok")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def node_of(self, key: str) -> int:
        """Index of the node that owns ``key``'s slot."""
        c = self.client()
        try:
            node = c.get_node_from_key(key)
            return [n.port for n in self.nodes].index(int(node.port))
        finally:
            c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup:
    """A primary, one replica and one Sentinel (quorum 1) watching service ``mymaster``."""

    SERVICE = "mymaster"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = RedisServer(root / "primary", appendonly=True)
        self.replica = RedisServer(root / "replica", appendonly=True)
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica.options = {"replicaof": f"127.0.0.1 {self.primary.port}"}
        self.replica.start()
        conf = self.root / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.sentinel_port}",
                    "bind 127.0.0.1",
                    f"dir {self.root}",
                    f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 1",
                    f"sentinel down-after-milliseconds {self.SERVICE} 1000",
                    f"sentinel failover-timeout {self.SERVICE} 10000",
                    f"sentinel parallel-syncs {self.SERVICE} 1",
                    "",
                ]
            )
        )
        binary = shutil.which("redis-server")
        assert binary is not None
        self.sentinel = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.replica_in_sync() and self.master_port() == self.primary.port:
                    return self
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Sentinel group did not come up")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}"

    def master_port(self) -> int:
        s = redis.Redis(port=self.sentinel_port)
        try:
            return int(s.sentinel_get_master_addr_by_name(self.SERVICE)[1])
        finally:
            s.close()

    def replica_in_sync(self) -> bool:
        info = redis.Redis(port=self.replica.port).info("replication")
        return info.get("master_link_status") == "up"

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            self.sentinel.wait(10)
        self.replica.stop()
        self.primary.stop()


def _cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not installed (it comes with redis-server's Debian package, redis-tools)")
    return binary
