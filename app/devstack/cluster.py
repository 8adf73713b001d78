"""A three-master Redis Cluster on loopback (real redis-server processes from redis/redis.conf,
joined with `redis-cli --cluster create`), for the queue core's contract tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from app.devstack.processes import free_port, real_clock_env
from app.devstack.redis_server import PASSWORD, RedisServer


class RedisClusterGroup:
    def __init__(self, workdir: Path, masters: int = 3, password: str = PASSWORD):
        self.dir = Path(workdir)
        self.password = password
        # A cluster node also listens on its port + 10000 (the cluster bus).
        self.nodes = [RedisServer(self.dir / f"shard{i}", port=free_port(below=55535),
                                  password=password,
                                  extra=("--cluster-enabled", "yes", "--cluster-config-file",
                                         "nodes.conf", "--cluster-node-timeout", "2000",
                                         "--masterauth", password))
                      for i in range(masters)]

    def start(self, timeout: float = 30.0) -> RedisClusterGroup:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        result = subprocess.run(
            ["redis-cli", "--no-auth-warning", "-a", self.password, "--cluster", "create",
             *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, env=real_clock_env(), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n"
                               f"{result.stderr}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [n.client().cluster("info")["cluster_state"] for n in self.nodes]
                if all(s == "ok" for s in states):
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes],
                            password=self.password)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
