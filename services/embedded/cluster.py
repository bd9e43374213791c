"""A real Redis Cluster of redis-server processes (:class:`RedisClusterProcess`), for the
tests and benchmarks that need one: cluster mode on, slots split evenly, replicas
attached, started and stopped as one."""

from __future__ import annotations

import random
import secrets
import socket
import time

from docl.services.embedded.common import AppendFsync, RedisStartError, Started, free_port
from docl.services.embedded.redis_process import RedisProcess

__all__ = ["RedisClusterProcess"]

#: Redis 6's cluster bus listens on the node's port + this.
CLUSTER_BUS_OFFSET = 10000
#: The highest port whose cluster bus port is still a port.
_MAX_NODE_PORT = 65535 - CLUSTER_BUS_OFFSET
#: The first port drawn for a node below the ephemeral range: above Ray's default
#: worker ports (10002..19999), which Ray's workers bind while tests run beside.
_FIRST_PORT = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: 32768 by default): the
    kernel never hands a port below it to an outgoing connection or a bind to port 0."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _cluster_port(host: str, taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000, Redis 6) is free too, neither of
    them in ``taken`` (the pairs of the cluster's other nodes); adds both to ``taken``.

    Both are drawn below the kernel's ephemeral range when it leaves room (ports 20000
    .. low - 10001, above Ray's default worker ports 10002..19999): a port there is
    never the local end of another process's outgoing connection (Ray's, a test
    client's), which is what took a bus port between the probe and redis-server's bind
    when the pair came from the ephemeral range. A start can still lose the race to
    another listener; :meth:`RedisClusterProcess.start` then draws a new pair."""
    low = _ephemeral_low()
    rng = random.Random()
    for attempt in range(200):
        if attempt < 100 and low - CLUSTER_BUS_OFFSET > _FIRST_PORT:
            port = rng.randrange(_FIRST_PORT, low - CLUSTER_BUS_OFFSET)
        else:
            port = free_port(host)
        bus = port + CLUSTER_BUS_OFFSET
        if port > _MAX_NODE_PORT or {port, bus} & taken:
            continue
        if not (_bindable(host, port) and _bindable(host, bus)):
            continue
        taken |= {port, bus}
        return port
    raise RedisStartError("no free port pair (port, port + 10000) for a cluster node")


class RedisClusterProcess(Started):
    """A real Redis Cluster of ``primaries`` redis-server processes on free loopback
    ports, each with ``replicas`` replicas: cluster mode on, one password for all
    (``requirepass`` and ``masterauth``), the 16384 slots split evenly over the primaries,
    joined with CLUSTER MEET, replicas attached with CLUSTER REPLICATE. Tests and
    benchmarks use it; :attr:`url` is the ``redis+cluster://`` URL ``docl serve`` takes.

        with RedisClusterProcess(primaries=3) as cluster:
            print(cluster.url)   # redis+cluster://:<password>@127.0.0.1:<port of node 0>
            cluster.nodes[1]     # a RedisProcess: .port, .pid, .command("CLUSTER", "INFO")

    ``cluster.nodes`` are the primaries (as started: a failover does not reorder them),
    ``cluster.replicas[i]`` replicates ``cluster.nodes[i % primaries]``. ``appendonly`` /
    ``appendfsync`` are every node's AOF settings; ``node_timeout_ms`` is how long a node
    must be unreachable before the others mark it failed and promote a replica.
    """

    SLOTS = 16384

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 0,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 5000,
        appendonly: bool = False,
        appendfsync: AppendFsync = "everysec",
    ) -> None:
        if primaries < 1:
            raise ValueError("a cluster needs at least one primary")
        if replicas < 0:
            raise ValueError("replicas per primary must be >= 0")
        self.password = secrets.token_hex(16)
        timeout = str(node_timeout_ms)
        args = ("--cluster-enabled", "yes", "--cluster-node-timeout", timeout)
        self._host = host
        self._taken: set[int] = set()
        taken = self._taken

        def node() -> RedisProcess:
            p = RedisProcess(
                host=host,
                port=_cluster_port(host, taken),
                password=self.password,
                unixsocket=False,
                appendonly=appendonly,
                appendfsync=appendfsync,
                extra_args=(*args, "--masterauth", self.password),
            )  # its own nodes.conf, in its own (temporary) data dir
            p.extra_args += ("--cluster-config-file", str(p.data_dir / "nodes.conf"))
            return p

        self.nodes = [node() for _ in range(primaries)]
        self.replicas = [node() for _ in range(primaries * replicas)]

    @property
    def processes(self) -> list[RedisProcess]:
        """Every node: the primaries, then the replicas."""
        return [*self.nodes, *self.replicas]

    @property
    def url(self) -> str:
        """``redis+cluster://:<password>@<host>:<port of the first node>`` (the client
        discovers the other nodes from it)."""
        first = self.nodes[0]
        return f"redis+cluster://:{self.password}@{first.host}:{first.port}"

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The [first, last] slots of each node, in node order (an even split)."""
        n = len(self.nodes)
        bounds = [self.SLOTS * i // n for i in range(n + 1)]
        return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]

    def start(self, timeout: float = 30.0) -> RedisClusterProcess:
        """Start every node, assign the slots, join them, wait for ``cluster_state:ok``
        on every node. Stops what it started when that fails."""
        try:
            for node in self.processes:
                self._start_node(node)
            for node, (lo, hi) in zip(self.nodes, self.slot_ranges(), strict=True):
                node.command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
            first = self.nodes[0]
            for node in self.processes[1:]:
                node.command("CLUSTER", "MEET", first.host, first.port)
            self.wait_ok(timeout)
            for i, replica in enumerate(self.replicas):
                primary = self.nodes[i % len(self.nodes)]
                replica.command("CLUSTER", "REPLICATE", primary.command("CLUSTER", "MYID"))
            self.wait_replicated(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, node: RedisProcess, attempts: int = 5) -> None:
        """Start one node; when its port or bus port was taken since it was chosen
        (another process bound it first), draw a new pair and start again."""
        for attempt in range(attempts):
            try:
                node.start()
                return
            except RedisStartError as e:
                if "in use" not in str(e) or attempt == attempts - 1:
                    raise
            # A node that failed to listen may have written its nodes.conf: a new pair
            # starts it as a new node.
            (node.data_dir / "nodes.conf").unlink(missing_ok=True)
            node.port = _cluster_port(self._host, self._taken)

    def info(self, node: int | RedisProcess = 0, section: str = "CLUSTER") -> dict[str, str]:
        """CLUSTER INFO (or ``INFO <section>`` for another section) of a node, as a dict:
        ``node`` a process or an index in :attr:`nodes`."""
        proc = self.nodes[node] if isinstance(node, int) else node
        cmd = ("CLUSTER", "INFO") if section == "CLUSTER" else ("INFO", section)
        raw = proc.command(*cmd)
        pairs = (line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)
        return {k: v.strip() for k, v in pairs}

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until every replica's link to its primary is up (its first sync done) and every
        node's CLUSTER NODES knows the replicas as replicas (the roles are gossiped: a
        client asking another node right after REPLICATE would still see a primary)."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            while self.info(replica, "replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RedisStartError(f"replica :{replica.port} did not sync in {timeout} s")
                time.sleep(0.05)
        for node in self.processes:
            while node.command("CLUSTER", "NODES").count(b"slave") < len(self.replicas):
                if time.monotonic() > deadline:
                    raise RedisStartError(f"node :{node.port} did not learn the replicas")
                time.sleep(0.05)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        want = str(len(self.processes))
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            infos = [self.info(p) for p in self.processes if p.running()]
            if all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == want
                   for i in infos):  # fmt: skip
                return
            last = infos[0]
            time.sleep(0.05)
        raise RedisStartError(f"the cluster did not reach cluster_state:ok in {timeout} s: {last}")

    def node_of_key(self, key: str) -> int:
        """The index in :attr:`nodes` of the node that owns ``key``'s slot (the slot asked
        of the cluster, CLUSTER KEYSLOT; the owner from the split at start)."""
        return self.node_of_slot(int(self.nodes[0].command("CLUSTER", "KEYSLOT", key)))

    def run_ids_on_every_node(self, stem: str, per_node: int = 1) -> list[str]:
        """``per_node`` run ids (``<stem>-<k>``) whose hash tag lands on each node, node by
        node: to spread runs over the cluster on purpose (tests, benchmarks)."""
        from docl.services.redis.keys import run_prefix

        found: list[list[str]] = [[] for _ in self.nodes]
        k = 0
        while any(len(ids) < per_node for ids in found):
            rid = f"{stem}-{k}"
            ids = found[self.node_of_key(f"{run_prefix(rid)}:meta")]
            if len(ids) < per_node:
                ids.append(rid)
            k += 1
        return [rid for ids in found for rid in ids]

    def node_of_slot(self, slot: int) -> int:
        """The index in :attr:`nodes` of the node that owns ``slot`` (from our split)."""
        for i, (lo, hi) in enumerate(self.slot_ranges()):
            if lo <= slot <= hi:
                return i
        raise ValueError(f"slot {slot} out of range")

    def stop(self) -> None:
        for node in self.processes:
            node.stop()
