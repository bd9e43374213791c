"""The real child processes docl starts and supervises, one module per job:

    common.py         the start/stop context manager, parent-death signal, free ports
    redis_process.py  RedisProcess: one redis-server (the embedded default of
                      ``docl serve``, the tests' and benchmarks' Redis), the sweep of
                      stale temporary directories
    cluster.py        RedisClusterProcess: a Redis Cluster of RedisProcesses
    server.py         ServerProcess: ``docl serve`` in a child process

Nothing here is a mock: the same Redis and server as in production. The worker
imports this package (``docl train`` starts a local server) without the server
extra: no module here imports a Redis client (set-up commands use the Redis
package's pure codec, ``services/redis/codec.py``).
"""

from __future__ import annotations

from docl.services.embedded.cluster import RedisClusterProcess
from docl.services.embedded.cluster import _cluster_port as _cluster_port
from docl.services.embedded.common import (
    AppendFsync,
    RedisStartError,
    die_with_parent,
    free_port,
)
from docl.services.embedded.redis_process import (
    RedisProcess,
    clean_stale_dirs,
    embedded_maxmemory,
    embedded_redis,
    redis_server_binary,
)
from docl.services.embedded.server import ServerProcess

__all__ = [
    "AppendFsync",
    "RedisClusterProcess",
    "RedisProcess",
    "RedisStartError",
    "ServerProcess",
    "clean_stale_dirs",
    "die_with_parent",
    "embedded_maxmemory",
    "embedded_redis",
    "free_port",
    "redis_server_binary",
]
