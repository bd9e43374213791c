"""Static checks of docker-compose.yml.

Checked without a Docker engine, for what would break the stack: each
service's command parses with the real CLI it names (the image's console
scripts), ports, probes and addresses line up across services, the env names
are ones the code reads, and the Redis service gets the AOF config.
tests/deploy/test_compose_native.py then runs the same commands natively, and
tests/deploy/test_compose_docker.py runs the file on a Docker daemon.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.deploy.deploy_util import (
    REDIS_CONF,
    REPO,
    VENV_BIN,
    CommandLineError,
    app_routes,
    client_env_names,
    command_argv,
    compose_environment,
    console_scripts,
    host_port,
    interpolate,
    load_compose,
    option_value,
    parse_command,
    redis_conf_directives,
    split_entrypoint,
)

COMPOSE = load_compose()
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCL_SERVICES = [n for n, s in SERVICES.items() if s.get("image", "").startswith("docl")]

# Service keys of the Compose specification this file may use: a typo such as
# `healtcheck:` is silently ignored by older Compose versions.
KNOWN_SERVICE_KEYS = {
    "build", "command", "depends_on", "entrypoint", "environment", "env_file", "healthcheck",
    "image", "init", "ports", "expose", "restart", "shm_size", "volumes", "deploy", "user",
    "working_dir", "stop_grace_period", "stop_signal", "labels", "networks", "profiles",
    "ulimits", "logging", "gpus", "read_only", "tmpfs", "cap_drop", "security_opt",
}  # fmt: skip


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", "healthchecks are exec form: [CMD, ...]"
    for word in test:
        for token in word.replace("'", " ").replace('"', " ").split():
            if token.startswith("http://"):
                return token
    raise AssertionError(f"no URL in healthcheck {test}")


def _published_targets(service: dict[str, Any]) -> set[int]:
    out = set()
    for p in service.get("ports", []):
        assert isinstance(p, str), "ports in short syntax"
        parts = p.split(":")
        assert len(parts) == 3 and parts[0] == "127.0.0.1", (
            f"{p}: publish on the host's loopback only (127.0.0.1:HOST:CONTAINER)"
        )
        out.add(int(parts[2]))
    return out


def _profile(name: str) -> set[str]:
    return set(SERVICES[name].get("profiles", []))


CLUSTER_NODES = [f"redis-node-{i}" for i in range(6)]


def test_the_stack_has_the_services_the_docs_describe() -> None:
    default = {n for n in SERVICES if not _profile(n)}
    assert default == {"redis", "score-server", "ray-head", "ray-worker", "train"}
    cluster = {n for n in SERVICES if _profile(n) == {"cluster"}}
    assert cluster == {*CLUSTER_NODES, "redis-cluster-init", "score-server-cluster"}
    assert set(SERVICES) == default | cluster
    for name, svc in SERVICES.items():
        unknown = set(svc) - KNOWN_SERVICE_KEYS
        assert not unknown, f"{name}: unknown compose keys {unknown}"


def test_docl_services_share_one_image_built_from_the_dockerfile() -> None:
    images = {SERVICES[n]["image"] for n in DOCL_SERVICES}
    assert len(images) == 1, f"one image for the server and every Ray node, got {images}"
    for n in DOCL_SERVICES:
        build = SERVICES[n]["build"]
        assert build["context"] == "."
        assert (REPO / build["dockerfile"]).is_file()
    assert set(DOCL_SERVICES) == {
        "score-server", "score-server-cluster", "ray-head", "ray-worker", "train",
    }  # fmt: skip


@pytest.mark.parametrize(
    "name", ["score-server", "score-server-cluster", "ray-head", "ray-worker", "train"]
)
def test_each_command_is_a_console_script_and_parses_with_the_real_cli(name: str) -> None:
    argv = command_argv(SERVICES[name])
    assert argv[0] in console_scripts(), f"{name}: {argv[0]} is not installed by the image"
    parsed = parse_command(argv)
    if parsed.path == ("ray", "job", "submit"):
        _, entry = split_entrypoint(argv)
        assert entry, f"{name}: `ray job submit` without an entrypoint"
        assert parse_command(entry).path == ("docl", "train")


def test_a_misspelt_flag_is_caught() -> None:
    """The check above can fail: a renamed flag is an error, not a silent default."""
    argv = command_argv(SERVICES["score-server"])
    parse_command(argv)
    with pytest.raises(CommandLineError, match="no-such-flag"):
        parse_command([*argv, "--no-such-flag", "1"])
    _, entry = split_entrypoint(command_argv(SERVICES["train"]))
    parse_command(entry)
    with pytest.raises(CommandLineError, match="epochz"):
        parse_command([*entry, "--epochz=3"])


@pytest.mark.parametrize(
    "argv",
    [["docl", "serve", "--help"], ["docl", "train", "--help"], ["ray", "start", "--help"],
     ["ray", "job", "submit", "--help"]],
)  # fmt: skip
def test_the_commands_exist_as_executables(argv: list[str]) -> None:
    proc = subprocess.run(
        [str(VENV_BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_score_server_port_command_publish_and_probe_line_up() -> None:
    svc = SERVICES["score-server"]
    argv = command_argv(svc)
    port = int(option_value(argv, "--port") or -1)
    assert option_value(argv, "--host") == "0.0.0.0", "listen on the container's network"
    assert port in _published_targets(svc)
    url = _healthcheck_url(svc)
    assert host_port(url)[1] == port
    path = "/" + url.split("/", 3)[3]
    assert path == "/readyz", "compose waits for ready (Redis reachable), not just alive"
    assert ("GET", path) in app_routes()


def test_score_server_reaches_redis_at_the_redis_service_port() -> None:
    argv = command_argv(SERVICES["score-server"])
    url = option_value(argv, "--redis-url")
    assert url is not None
    host, port = host_port(url)
    assert host == "redis" and host in SERVICES
    redis_argv = command_argv(SERVICES["redis"])
    conf_port = int(redis_conf_directives(REDIS_CONF.read_text())["port"][0])
    assert port == int(option_value(redis_argv, "--port") or conf_port)
    assert SERVICES["score-server"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_runs_the_repository_config_with_aof_on_a_named_volume() -> None:
    svc = SERVICES["redis"]
    assert svc["image"].startswith("redis:7")
    argv = command_argv(svc)
    assert argv[0] == "redis-server"
    conf_in_container = argv[1]
    mounts = {}
    for v in svc["volumes"]:
        src, dst, *_ = v.split(":")
        mounts[dst] = src
    assert mounts[conf_in_container] == "./deploy/redis/redis.conf"
    data_dir = option_value(argv, "--dir")
    assert data_dir is not None and mounts[data_dir] in COMPOSE["volumes"], "AOF on a named volume"
    conf = redis_conf_directives(REDIS_CONF.read_text())
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"] == ["everysec"]
    assert conf["maxmemory-policy"] == ["noeviction"], "an evicted record is a lost score"
    assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_ray_nodes_and_the_job_find_each_other() -> None:
    head = command_argv(SERVICES["ray-head"])
    head_p = parse_command(head)
    assert head_p.params["head"] and head_p.params["block"]
    gcs_port = int(option_value(head, "--port") or 6379)
    dash_port = int(option_value(head, "--dashboard-port") or 8265)
    assert option_value(head, "--dashboard-host") == "0.0.0.0"
    assert dash_port in _published_targets(SERVICES["ray-head"])
    assert host_port(_healthcheck_url(SERVICES["ray-head"]))[1] == dash_port
    assert "shm_size" in SERVICES["ray-head"] and "shm_size" in SERVICES["ray-worker"]

    worker = command_argv(SERVICES["ray-worker"])
    assert parse_command(worker).params["block"]
    assert host_port(option_value(worker, "--address") or "") == ("ray-head", gcs_port)
    assert "container_name" not in SERVICES["ray-worker"], (
        "--scale ray-worker=N needs generated names"
    )

    submit, entry = split_entrypoint(command_argv(SERVICES["train"]))
    assert host_port(option_value(submit, "--address") or "") == ("ray-head", dash_port)
    assert option_value(entry, "--ray-address") == "auto"
    server_host, server_port = host_port(option_value(entry, "--server") or "")
    assert server_host == "score-server"
    assert server_port == int(option_value(command_argv(SERVICES["score-server"]), "--port") or -1)
    deps = SERVICES["train"]["depends_on"]
    assert deps["score-server"]["condition"] == "service_healthy"
    assert deps["ray-head"]["condition"] == "service_healthy"
    assert SERVICES["train"]["restart"] == "no", "a one-shot job"


def test_env_names_are_settings_the_code_reads() -> None:
    from tests.deploy.deploy_util import settings_env_names

    server_env = compose_environment(SERVICES["score-server"], {"DOCL_API_TOKEN": "x"})
    unknown = {k for k in server_env if k.startswith("DOCL_")} - settings_env_names()
    assert not unknown, f"score-server sets {unknown}, which services.config.Settings does not read"
    assert "DOCL_API_TOKEN" in server_env
    for name in ("ray-head", "ray-worker", "train"):
        env = compose_environment(SERVICES[name], {"DOCL_API_TOKEN": "x"})
        unknown = {k for k in env if k.startswith("DOCL_")} - client_env_names()
        assert not unknown, f"{name} sets {unknown}, which the SDK does not read"
        server = env.get("DOCL_SERVER")
        if server is not None:
            port = int(option_value(command_argv(SERVICES["score-server"]), "--port") or -1)
            assert host_port(server) == ("score-server", port)


def test_secrets_are_passed_through_never_defaulted() -> None:
    """An unset token must stay unset in the container: an empty one is a token too."""
    for name, svc in SERVICES.items():
        for key in ("DOCL_API_TOKEN", "RAY_AUTH_TOKEN"):
            if key in (svc.get("environment") or {}):
                assert svc["environment"][key] is None, f"{name}: {key} must be a bare pass-through"
                assert key not in compose_environment(svc, {}), name
                assert compose_environment(svc, {key: "t"})[key] == "t"


def test_ray_auth_mode_is_explicit_and_consistent() -> None:
    modes = {
        n: compose_environment(SERVICES[n], {}).get("RAY_AUTH_MODE")
        for n in ("ray-head", "ray-worker", "train")
    }
    assert set(modes.values()) == {"disabled"}, modes
    modes = {
        n: compose_environment(SERVICES[n], {"RAY_AUTH_MODE": "token"}).get("RAY_AUTH_MODE")
        for n in ("ray-head", "ray-worker", "train")
    }
    assert set(modes.values()) == {"token"}, modes


def test_interpolation_of_the_demo_length() -> None:
    _, entry = split_entrypoint(command_argv(SERVICES["train"], {}))
    assert int(option_value(entry, "--epochs") or 0) >= 1
    _, entry = split_entrypoint(command_argv(SERVICES["train"], {"DEMO_EPOCHS": "3"}))
    assert option_value(entry, "--epochs") == "3"
    assert interpolate("${X:-a}", {"X": ""}) == "a" and interpolate("${X-a}", {"X": ""}) == ""


# -- the `cluster` profile ---------------------------------------------------------------


def _init_script() -> tuple[list[str], list[str]]:
    """The init service's ``sh -c`` script as (guard argv, create argv)."""
    import shlex

    argv = command_argv(SERVICES["redis-cluster-init"])
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3, argv
    guard, sep, create = argv[2].partition("||")
    assert sep and "||" not in create and ";" not in argv[2] and "&&" not in argv[2]
    return shlex.split(guard), shlex.split(create)


def test_cluster_nodes_run_the_repository_config_in_cluster_mode_with_fsync_always() -> None:
    conf = redis_conf_directives(REDIS_CONF.read_text())
    assert conf["appendonly"] == ["yes"]
    volumes = set()
    for name in CLUSTER_NODES:
        svc = SERVICES[name]
        assert svc["image"].startswith("redis:7")
        argv = command_argv(svc)
        assert argv[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts["/usr/local/etc/redis/redis.conf"] == "./deploy/redis/redis.conf"
        assert option_value(argv, "--cluster-enabled") == "yes"
        assert option_value(argv, "--appendfsync") == "always"
        data = option_value(argv, "--dir")
        assert data is not None and mounts[data] in COMPOSE["volumes"], "AOF on a named volume"
        assert (option_value(argv, "--cluster-config-file") or "").startswith(data + "/")
        volumes.add(mounts[data])
        assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert len(volumes) == len(CLUSTER_NODES), "each node its own volume"


def test_cluster_init_creates_three_primaries_with_a_replica_each_once() -> None:
    """The init command's argument list: ``redis-cli --cluster create`` over every node
    service at its Redis port, one replica per primary, no prompt; guarded by a check
    that the cluster does not serve yet (a second ``up`` exits 0 without touching it)."""
    guard, create = _init_script()
    assert create[:3] == ["redis-cli", "--cluster", "create"]
    first_flag = next(i for i, a in enumerate(create) if a.startswith("--") and i > 2)
    nodes, flags = create[3:first_flag], create[first_flag:]
    assert flags == ["--cluster-replicas", "1", "--cluster-yes"]
    conf_port = int(redis_conf_directives(REDIS_CONF.read_text())["port"][0])
    assert [host_port(n) for n in nodes] == [(n, conf_port) for n in CLUSTER_NODES]
    assert len(nodes) // (1 + int(flags[1])) == 3, "3 primaries"
    assert guard[:3] == ["redis-cli", "-u", f"redis://{CLUSTER_NODES[0]}:{conf_port}"]
    assert guard[3:] == ["cluster", "info", "|", "grep", "-q", "cluster_state:ok"]
    deps = SERVICES["redis-cluster-init"]["depends_on"]
    assert {n: d["condition"] for n, d in deps.items()} == dict.fromkeys(
        CLUSTER_NODES, "service_healthy"
    )
    assert SERVICES["redis-cluster-init"]["restart"] == "no", "a one-shot job"


def test_cluster_score_server_uses_the_cluster_with_wait_and_its_own_port() -> None:
    from tests.deploy.deploy_util import settings_env_names

    svc = SERVICES["score-server-cluster"]
    argv = command_argv(svc)
    url = option_value(argv, "--redis-url") or ""
    assert url.startswith("redis+cluster://")
    assert host_port(url.replace("redis+cluster://", "redis://")) == (CLUSTER_NODES[0], 6379)
    deps = svc["depends_on"]
    assert deps == {"redis-cluster-init": {"condition": "service_completed_successfully"}}
    env = compose_environment(svc, {})
    assert not {k for k in env if k.startswith("DOCL_")} - settings_env_names()
    assert env["DOCL_REDIS_WAIT_REPLICAS"] == "1"
    port = int(option_value(argv, "--port") or -1)
    assert port in _published_targets(svc)
    assert host_port(_healthcheck_url(svc))[1] == port
    host_ports = {p.split(":")[1] for n in ("score-server", "score-server-cluster")
                  for p in SERVICES[n]["ports"]}  # fmt: skip
    assert len(host_ports) == 2, "both servers can run at once"
