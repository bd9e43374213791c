"""The import direction of the five packages, checked on the source (an AST walk).

    wire      the wire contract             imports no other docl package
    services  the score server              imports wire (and itself)
    client    the SDK (client/cli aside)     imports wire (and itself); client/step.py (the
                                             plain-PyTorch sampler's step-level selection)
                                             also the worker's pure selection math:
                                             services.{methods, seeds}, so a plain loop
                                             and the worker pick the same batches
    worker    training                       imports client, wire, and the server's pure
                                             math: services.{plan, sampling, scoring, seeds,
                                             methods (the selection-method registry)}
                                             (+ services.embedded: it starts `docl serve`
                                             as a child process, nothing of the server
                                             runs in the worker's process)
    lab       benchmarks and harnesses       anything but the CLI
    cli       client/cli, the commands       anything (imports are lazy, per command)

Every import counts, also one inside a function. Within services, ``redis``
(redis-py, its exceptions included) and ``hiredis`` are imported by the Redis
package ``services/redis/`` only, and there not by its pure ``codec.py`` (which
the embedded process supervisors use, in the worker too); the store translates
Redis' errors into storage's. The engine, the routes and ``errors.py`` go through
``storage`` (the ``Store`` protocol, its error types), never the Redis package; the
RESP client ``redis/resp.py`` is the Redis package's own; ``services/embedded/``
takes only the pure codec and key names (``redis/keys.py``) from it. Redis key names
(the ``{run:<id>}`` hash tag, ``docl:runs``) are spelled only in ``services/redis/``:
the run's layout (``layout.py``) and ``storage.py``, which the engine sees, name no key
and do not import the Redis package. docs/architecture.md states the same rules.

Within ``services/engine`` the modules import each other in one direction: no import
cycle, not even one hidden under ``TYPE_CHECKING`` or inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("wire", "services", "worker", "client", "lab")

#: services modules a worker may import (pure math, or a process launcher; see above)
WORKER_MAY_USE = {"plan", "sampling", "scoring", "seeds", "methods", "embedded"}
#: the one client module that may use them too (the same pools and step rules as the worker)
CLIENT_STEP = "client/step.py"
CLIENT_MAY_USE = {"methods", "seeds"}
#: the services package that talks to Redis: the only one that imports a Redis client
REDIS_PACKAGE = "services/redis/"
#: modules of it that import no Redis client (the embedded supervisors use codec and keys)
PURE_REDIS_MODULES = {
    "services/redis/__init__.py",
    "services/redis/codec.py",
    "services/redis/keys.py",
}
#: what of the Redis package the embedded process supervisors may import (pure modules)
EMBEDDED_MAY_USE = ("docl.services.redis.codec", "docl.services.redis.keys")
#: services code that sees storage only through ``storage`` (protocol, errors), never Redis
STORAGE_ONLY = (
    "services/engine/",
    "services/routes/",
    "services/errors.py",
    "services/layout.py",
    "services/storage.py",
)
#: a Redis key name in a string: a run's hash tag ``{run:`` or the run index ``docl:runs``
KEY_NAME = re.compile(r"\{run:|docl:runs")
#: files that break the direction today, and why; each entry is a debt with an owner
PENDING: dict[str, str] = {}


def layer(path: str) -> str:
    """The layer of a repository-relative source path."""
    if path.startswith("client/cli/"):
        return "cli"
    return path.split("/", 1)[0]


def _module_of(path: str) -> str:
    """``services/engine/runs.py`` -> ``docl.services.engine.runs``."""
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["docl", *parts])


def imports_of(path: str, source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, at any depth."""
    out: list[tuple[int, str]] = []
    package = _module_of(path).rsplit(".", 0 if path.endswith("__init__.py") else 1)[0]
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "docl" or base.startswith("docl."):
                # `from docl.services import plan` imports docl.services.plan: name the
                # imported names under their module (a class's layer is its module's)
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, base))
    return out


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violation(path: str, module: str) -> str | None:
    """Why ``path`` may not import ``module`` (None: allowed)."""
    here = layer(path)
    if module.split(".")[0] in ("redis", "hiredis") and here == "services":
        if not path.startswith(REDIS_PACKAGE) or path in PURE_REDIS_MODULES:
            return "only services/redis/ imports redis (it translates its errors into storage's)"
        return None
    if not module.startswith("docl.") or module.count(".") < 1:
        return None
    parts = module.split(".")
    target = "cli" if parts[1:3] == ["client", "cli"] else parts[1]
    if target not in (*FOLDERS, "cli"):
        return None
    redis_package = _within(module, "docl.services.redis")
    if path.startswith(STORAGE_ONLY) and redis_package:
        return (
            "the engine, routes, errors.py, layout.py and storage.py use storage "
            "(Store, its errors, the layout), not Redis"
        )
    if here == "services" and redis_package and not path.startswith(REDIS_PACKAGE):
        if _within(module, "docl.services.redis.resp"):
            return "only services/redis/ uses the RESP client"
        if path.startswith("services/embedded") and not any(
            _within(module, pure) for pure in EMBEDDED_MAY_USE
        ):
            return "the embedded supervisors take only codec and keys (no redis-py in the worker)"
    allowed = {
        "wire": {"wire"},
        "services": {"wire", "services"},
        "client": {"wire", "client"},
        "worker": {"wire", "client", "worker"},
        "lab": {"wire", "services", "client", "worker", "lab"},
        "cli": {"wire", "services", "client", "worker", "lab", "cli"},
    }[here]
    if target in allowed:
        return None
    if here == "worker" and target == "services" and parts[2:3] and parts[2] in WORKER_MAY_USE:
        return None
    if path == CLIENT_STEP and target == "services" and parts[2:3] and parts[2] in CLIENT_MAY_USE:
        return None
    return f"{here} may not import {module}"


def check(sources: dict[str, str]) -> list[str]:
    """Every forbidden import in ``sources`` (path -> text), as 'path:line: why'."""
    found = []
    for path, text in sorted(sources.items()):
        if path in PENDING:
            continue
        for line, module in imports_of(path, text):
            why = violation(path, module)
            if why is not None:
                found.append(f"{path}:{line}: {why}")
    return found


def key_names(path: str, source: str) -> list[int]:
    """Lines of ``source`` where a string (a docstring, an f-string's text) spells a Redis
    key name, if ``path`` is services code outside the Redis package (which names them)."""
    if not path.startswith("services/") or path.startswith(REDIS_PACKAGE):
        return []
    return sorted(
        {
            node.lineno
            for node in ast.walk(ast.parse(source, filename=path))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and KEY_NAME.search(node.value)
        }
    )


def _tree() -> dict[str, str]:
    return {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    }


#: packages whose modules may not import each other in a cycle
ACYCLIC = ("docl.services.engine",)


def import_cycle(sources: dict[str, str], package: str) -> list[str] | None:
    """One import cycle among the modules of ``package`` in ``sources`` (path -> text), as
    the modules in order, the first repeated at the end; None when there is none. Every
    import counts (lazy ones, and ones under ``TYPE_CHECKING``)."""
    modules = {_module_of(p): p for p in sources if _within(_module_of(p), package)}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for _, name in imports_of(path, sources[path]):
            # `from a.b import c` reads as a.b.c: the longest prefix that is a module
            target = max((m for m in modules if _within(name, m)), key=len, default=None)
            if target is not None and target != mod:
                graph[mod].add(target)
    done: set[str] = set()

    def visit(mod: str, stack: list[str]) -> list[str] | None:
        if mod in stack:
            return [*stack[stack.index(mod) :], mod]
        if mod in done:
            return None
        for nxt in sorted(graph[mod]):
            found = visit(nxt, [*stack, mod])
            if found is not None:
                return found
        done.add(mod)
        return None

    for mod in sorted(graph):
        found = visit(mod, [])
        if found is not None:
            return found
    return None


def test_the_engine_has_no_import_cycle() -> None:
    tree = _tree()
    for package in ACYCLIC:
        assert import_cycle(tree, package) is None, package


def test_an_import_cycle_is_caught_even_under_type_checking() -> None:
    tree = {
        "services/engine/__init__.py": "from docl.services.engine.runs import RunState\n",
        "services/engine/runs.py": "import numpy\n",
        "services/engine/cache.py": "from docl.services.engine.runs import RunState\n",
        "services/engine/stats.py": "from docl.services.engine import Engine\n",
    }
    assert import_cycle(tree, "docl.services.engine") is None  # stats -> __init__ -> runs
    tree["services/engine/runs.py"] = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from docl.services.engine.cache import RecordCache\n"
    )
    assert import_cycle(tree, "docl.services.engine") == [
        "docl.services.engine.runs",
        "docl.services.engine.cache",
        "docl.services.engine.runs",
    ]
    tree["services/engine/runs.py"] = "def f():\n    from .stats import x\n"
    tree["services/engine/stats.py"] = "from .runs import RunState\n"
    assert import_cycle(tree, "docl.services.engine") is not None


def test_the_tree_follows_the_import_direction() -> None:
    tree = _tree()
    assert len(tree) > 60 and {layer(p) for p in tree} == {*FOLDERS, "cli"}
    docl_imports = [
        m for p, t in tree.items() for _, m in imports_of(p, t) if m.startswith("docl.")
    ]
    assert len(docl_imports) > 150  # the walk sees the imports, lazy ones included
    assert check(tree) == []
    for path in PENDING:  # a debt paid is removed from the list
        assert (
            path in tree
            and check({path: tree[path]}) == []
            and any(violation(path, m) for _, m in imports_of(path, tree[path]))
        ), f"{path} no longer needs its PENDING entry"


def test_redis_key_names_are_spelled_only_in_the_redis_package() -> None:
    tree = _tree()
    names = tree["services/redis/keys.py"]
    assert key_names("services/redis/keys.py", names) == []  # the package spells them ...
    assert len(key_names("services/keys.py", names)) >= 3  # ... anywhere else they are seen
    assert {p: key_names(p, t) for p, t in tree.items() if key_names(p, t)} == {}


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("services/engine/runs.py", 'def f(rid):\n    return f"{{run:{rid}}}:meta"\n'),
        ("services/layout.py", 'RUNS_INDEX = "docl:runs"\n'),
        ("services/storage.py", '"""Every key shares ``{run:<id>}``."""\n'),
        ("services/embedded/cluster.py", 'PREFIX = "{run:"\n'),
    ],
)
def test_a_key_name_outside_the_redis_package_is_caught(path: str, source: str) -> None:
    assert len(key_names(path, source)) == 1


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("wire/models.py", "from docl.client.errors import DoclError\n"),
        ("wire/encoding.py", "from docl import services\n"),
        ("services/app.py", "import docl.worker.loop\n"),
        ("services/routes/runs.py", "def f():\n    from docl.client import ScoreClient\n"),
        ("services/errors.py", "from docl.client.models import Problem\n"),
        ("services/engine/reports.py", "from docl.services.redis.store import RedisStore\n"),
        ("services/engine/runs.py", "from ..redis.store import RedisStore\n"),
        ("services/engine/cache.py", "from redis.exceptions import ConnectionError\n"),
        ("services/routes/reports.py", "from redis import exceptions\n"),
        ("services/routes/health.py", "from docl.services.redis.errors import translate\n"),
        ("services/errors.py", "from redis.exceptions import RedisError\n"),
        ("services/errors.py", "from docl.services.redis.store import RedisStore\n"),
        ("services/app.py", "import redis.asyncio as aioredis\n"),
        ("services/app.py", "from redis.exceptions import ConnectionError\n"),
        ("services/redis/codec.py", "import hiredis\n"),
        ("services/embedded/server.py", "from docl.services.redis.store import RedisStore\n"),
        ("services/embedded/cluster.py", "from docl.services.redis.slot import SlotStore\n"),
        ("services/layout.py", "from docl.services.redis.keys import run_prefix\n"),
        ("services/storage.py", "from docl.services.redis.keys import RunKeys\n"),
        ("services/redis/keys.py", "import redis\n"),
        ("services/plan.py", "from docl.services.redis.resp import RespClient\n"),
        ("client/_client.py", "from docl.services import plan\n"),
        ("client/_requests.py", "from docl.services.engine import Engine\n"),
        ("client/_arrays.py", "import docl.worker.loop\n"),
        ("client/_poster.py", "def f():\n    from docl.lab import bench_service\n"),
        ("wire/retry.py", "from docl.client.errors import retryable\n"),
        ("client/outage.py", "from docl.worker.loop import ServerEpochs\n"),
        ("client/reporter.py", "from docl.worker.loop import train_loop\n"),
        ("client/step.py", "from docl.services.engine import Engine\n"),
        ("client/batch_sampler.py", "from docl.services.methods import select_step\n"),
        ("worker/loop.py", "from docl.services.engine import Engine\n"),
        ("worker/train.py", "from docl.services.redis.store import RedisStore\n"),
        ("worker/train.py", "from docl.lab.study import train_with_study\n"),
        ("lab/bench_service.py", "from docl.client.cli import main\n"),
    ],
)
def test_a_forbidden_import_is_caught(path: str, source: str) -> None:
    assert len(check({path: source})) == 1


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("client/cli/serve.py", "def f():\n    from docl.services.app import create_app\n"),
        ("worker/loop.py", "from docl.services.seeds import epoch_rng\n"),
        ("client/step.py", "from docl.services.methods.pool import candidate_pools\n"),
        ("worker/train.py", "from docl.services.embedded import ServerProcess\n"),
        ("services/engine/runs.py", "from .validate import validate_reports\n"),
        ("services/app.py", "from docl.services.redis.store import RedisStore\n"),
        ("services/redis/connection.py", "from redis.exceptions import NoScriptError\n"),
        ("services/redis/store.py", "from .slot import SlotStore\n"),
        (
            "services/embedded/redis_process.py",
            "from docl.services.redis.codec import read_reply\n",
        ),
        ("services/embedded/cluster.py", "from docl.services.redis.keys import run_prefix\n"),
        ("services/redis/slot.py", "from docl.services.redis.keys import keys_of\n"),
        ("lab/crash.py", "from docl.services.redis.keys import keys_of\n"),
        ("lab/bench_store.py", "from docl.services.redis.resp import RespClient\n"),
        ("client/_client.py", "from docl.wire import encoding as wire\n"),
        ("client/_requests.py", "from docl.client._arrays import check_report_arrays\n"),
        ("client/_poster.py", "from docl.client._requests import _Call\n"),
        ("client/reporter.py", "from docl.wire.retry import EqualJitterBackoff, Retry\n"),
        ("services/engine/reports.py", "from docl.wire.retry import FullJitterBackoff\n"),
    ],
)
def test_an_allowed_import_passes(path: str, source: str) -> None:
    assert check({path: source}) == []


def test_the_sdk_import_paths_re_export_the_wire_contract() -> None:
    import docl.client.models as client_models
    import docl.client.wire as client_wire
    import docl.wire.encoding as encoding
    import docl.wire.models as models

    for shim, real in ((client_models, models), (client_wire, encoding)):
        assert shim.__all__ == real.__all__
        for name in real.__all__:
            assert getattr(shim, name) is getattr(real, name), name


#: Issue 21's bound: a library module a newcomer can read in one sitting.
MAX_MODULE_LINES = 700


def test_no_library_module_is_over_700_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in ("wire", "client", "services", "worker", "lab")
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(sizes) > 50, sorted(sizes)  # the packages were found
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"split these modules by job: {over}"
