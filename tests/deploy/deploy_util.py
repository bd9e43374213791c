"""Shared helpers of the deploy tests: read the deploy files, resolve their commands
against the real command lines, and parse a Dockerfile.

Nothing here knows what the files should contain; the tests say that.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
REDIS_CONF = REPO / "deploy" / "redis" / "redis.conf"
K8S_DIR = REPO / "deploy" / "k8s"
VENV_BIN = REPO / ".venv" / "bin"


# -- files ------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    """docker-compose.yml, with each service's ``image``, ``ports`` and build args at
    their defaults (``${DOCL_PORT:-8000}`` -> ``8000``: what `up` runs with no
    settings); commands and environments keep their variables, for
    :func:`command_argv` and :func:`compose_environment` to fill in with a shell."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    for svc in (data.get("services") or {}).values():
        if "image" in svc:
            svc["image"] = interpolate(str(svc["image"]), {})
        if "ports" in svc:
            svc["ports"] = [interpolate(str(p), {}) for p in svc["ports"]]
        args = (svc.get("build") or {}).get("args") or {}
        for k, v in args.items():
            args[k] = interpolate(str(v), {})
    return data


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def load_kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def load_manifests() -> list[dict[str, Any]]:
    """Every object of every manifest kustomization.yaml lists, in order."""
    docs: list[dict[str, Any]] = []
    for name in load_kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / name).read_text()):
            if doc is not None:
                docs.append(doc)
    return docs


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in load_manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def redis_conf_directives(text: str) -> dict[str, list[str]]:
    """``directive -> arguments`` of a redis.conf (last one wins, as in Redis)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        out[words[0].lower()] = words[1:]
    return out


# -- compose interpolation --------------------------------------------------------------

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        val = env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op in (":?", "?"):
            if not val:
                raise ValueError(f"compose needs ${name}: {arg}")
            return val
        return val or ""

    return _VAR.sub(sub, value)


def compose_environment(service: Mapping[str, Any], shell: Mapping[str, str]) -> dict[str, str]:
    """The environment Compose gives a service's container, for a given shell env.

    A variable listed without a value is passed through from the shell when set
    there and left out of the container otherwise."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs: dict[str, str | None] = {}
        for item in raw:
            k, sep, v = item.partition("=")
            pairs[k] = v if sep else None
        raw = pairs
    out: dict[str, str] = {}
    for k, v in raw.items():
        if v is None:
            if k in shell:
                out[k] = shell[k]
        else:
            out[k] = interpolate(str(v), shell)
    return out


def command_argv(service: Mapping[str, Any], shell: Mapping[str, str] | None = None) -> list[str]:
    cmd = service["command"]
    assert isinstance(cmd, list), "compose commands are exec form (a list), never a shell string"
    return [interpolate(str(a), shell or {}) for a in cmd]


# -- command lines ----------------------------------------------------------------------


@cache
def _docl_group() -> Any:  # typer's own copy of click.Command
    import typer

    from docl.client import cli

    cli._register()
    return typer.main.get_command(cli.app)


@cache
def _ray_group() -> click.Command:
    from ray.scripts.scripts import cli

    return cli


def console_scripts() -> dict[str, str]:
    """Console scripts of the distributions the image installs (docl and ray)."""
    out: dict[str, str] = {}
    for dist in ("docl", "ray"):
        for ep in distribution(dist).entry_points:
            if ep.group == "console_scripts":
                out[ep.name] = dist
    return out


class CommandLineError(ValueError):
    """The real command line rejected the arguments (unknown command or option, bad value)."""


def _click_errors() -> tuple[type[Exception], ...]:
    # Typer ships its own copy of click (typer._click); Ray uses click itself.
    errors: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        errors.append(TyperClickException)
    except ImportError:  # an older typer that uses click directly
        pass
    return tuple(errors)


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "get_command") and hasattr(cmd, "list_commands")


def _resolve(argv: Sequence[str]) -> tuple[Any, list[str], list[str]]:
    """(click command, its path, the remaining arguments) for ``argv``."""
    root = {"docl": _docl_group, "ray": _ray_group}.get(argv[0])
    if root is None:
        raise CommandLineError(f"{argv[0]!r} is neither `docl` nor `ray`")
    cmd: Any = root()
    path, rest = [argv[0]], list(argv[1:])
    ctx = cmd.context_class(cmd, info_name=argv[0])
    while _is_group(cmd):
        if not rest:
            raise CommandLineError(f"`{' '.join(path)}` needs a sub-command")
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            raise CommandLineError(f"`{' '.join(path)}` has no sub-command {rest[0]!r}")
        path.append(rest[0])
        cmd, rest = sub, rest[1:]
        ctx = cmd.context_class(cmd, info_name=path[-1], parent=ctx)
    return cmd, path, rest


@dataclass
class Parsed:
    """A command line, parsed by the real click command it names."""

    path: tuple[str, ...]  # e.g. ("docl", "train")
    params: dict[str, Any]
    given: set[str] = field(default_factory=set)  # parameters named on the command line


def parse_command(argv: Sequence[str]) -> Parsed:
    """Resolve ``argv`` (``docl …`` or ``ray …``) to its click command and parse the
    arguments exactly as the CLI would, without running it. Raises
    :class:`CommandLineError` for an unknown command or option or a bad value."""
    try:
        cmd, path, rest = _resolve(argv)
        ctx = cmd.make_context(" ".join(path), rest, resilient_parsing=False)
    except _click_errors() as e:
        raise CommandLineError(f"`{' '.join(argv)}`: {e.format_message()}") from e  # type: ignore[attr-defined]
    given = {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    return Parsed(tuple(path), dict(ctx.params), given)


def option_names(path: Sequence[str]) -> set[str]:
    """Every ``--flag`` the command at ``path`` accepts."""
    cmd, _, rest = _resolve(list(path))
    assert not rest
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def option_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag value`` or ``--flag=value`` in ``argv`` (last one wins)."""
    found: str | None = None
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif a.startswith(flag + "="):
            found = a.split("=", 1)[1]
    return found


def split_entrypoint(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``ray job submit … -- <entrypoint>`` -> (submit argv, entrypoint argv)."""
    argv = list(argv)
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def host_port(url: str) -> tuple[str, int]:
    """Host and port of ``scheme://host:port/...`` or a bare ``host:port``."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    assert parts.hostname is not None and parts.port is not None, f"no host:port in {url!r}"
    return parts.hostname, parts.port


# -- the app's routes -------------------------------------------------------------------


@cache
def app_routes() -> frozenset[tuple[str, str]]:
    """``(method, path)`` of every route of the score server's app, from its OpenAPI
    document (FastAPI's public view of the routes; no server is started)."""
    from docl.services.app import create_app
    from docl.services.config import Settings

    schema = create_app(Settings()).openapi()
    return frozenset(
        (method.upper(), path) for path, ops in schema["paths"].items() for method in ops
    )


def settings_env_names() -> set[str]:
    """``DOCL_*`` names the score server reads (fields of Settings with the env prefix)."""
    from docl.services.config import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    assert prefix, "Settings has no env_prefix"
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def client_env_names() -> set[str]:
    """``DOCL_*`` names the training side reads: the SDK's (it is the server's client)
    and the options of ``docl train`` (the job's driver on a Ray head), such as
    ``DOCL_STORAGE``."""
    from docl.client import _requests

    names = {v for k, v in vars(_requests).items() if k.startswith("ENV_") and isinstance(v, str)}
    for param in _docl_group().commands["train"].params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else list(envvar or []))
    return names


# -- Dockerfile -------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the (joined) line
    stage: int  # index of the FROM it belongs to (-1 before the first)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None."""
        text = self.args
        # HEALTHCHECK [options] CMD <command>
        if self.keyword == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(.*)$", text, re.S)
            if m is None:
                return None
            text = m.group(1)
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def flags(self) -> dict[str, str]:
        """``--name=value`` options before the instruction's arguments."""
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.args.split(" CMD ")[0]))


def parse_dockerfile(text: str) -> list[Instruction]:
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        lines.append(buf)
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    out: list[Instruction] = []
    stage = -1
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, rest.strip(), stage))
    return out


def dockerfile_args(instructions: Sequence[Instruction]) -> dict[str, str]:
    """Default values of every ARG (global and per stage; the last one wins)."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, value = ins.args.split("=", 1)
            out[name.strip()] = value.strip().strip('"')
    return out


def dockerignore_excludes(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (relative, '/'-separated) out of the
    build context: the last matching pattern wins, ``!`` re-includes; a pattern
    that matches a parent directory matches everything below it."""
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts) or any(
                fnmatch.fnmatch(p, pat) for p in prefixes
            )
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            excluded = not neg
    return excluded


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


# Ray's internal servers: Compose leaves them at their defaults inside each
# container; natively every Ray node on one host needs its own ports.
RAY_INTERNAL_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def env_without_ray() -> dict[str, str]:
    """This process's environment minus anything that would point a Ray command at
    some other cluster on this machine."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def dockerfile_env(instructions: Sequence[Instruction]) -> dict[str, str]:
    """``ENV`` values of the final stage (``KEY=value`` pairs; the last one wins)."""
    last = max(i.stage for i in instructions)
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage == last:
            for word in shlex.split(ins.args):
                if "=" in word:
                    k, v = word.split("=", 1)
                    out[k] = v
    return out


# -- a score server's report stream ----------------------------------------------------


def stream_reports(base: str, token: str, run_id: str, reports: int = 4) -> dict[str, Any]:
    """Create a 64-sample run on the server at ``base``, draw epoch 0 and send
    ``reports`` reports of 16 samples each (re-sending on 503: a server with
    ``DOCL_REDIS_WAIT_REPLICAS`` answers so while a replica catches up); the
    run's stats afterwards."""
    import httpx

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        body = {"run_id": run_id, "num_samples": 64, "num_outputs": 4, "epochs": 1,
                "params": {"warmup_epochs": 1, "batch_size": 16}}  # fmt: skip
        assert c.post("/v1/runs", json=body).status_code == 201
        c.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0}).raise_for_status()
        for k in range(reports):
            doc = {"report_id": f"r{k}", "epoch": 0, "lr_sum": 0.1,
                   "indices": list(range(16 * k, 16 * k + 16)),
                   "outputs": [[0.1, 0.2, 0.3, 0.4]] * 16, "targets": [1] * 16}  # fmt: skip
            deadline = time.monotonic() + 30
            while (r := c.post(f"/v1/runs/{run_id}/reports", json=doc)).status_code == 503:
                assert time.monotonic() < deadline, r.text  # replicas still syncing: re-send
                time.sleep(0.5)
            assert r.status_code == 200, r.text
        stats: dict[str, Any] = c.get(f"/v1/runs/{run_id}/stats").raise_for_status().json()
    return stats
