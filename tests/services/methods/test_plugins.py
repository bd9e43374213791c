"""A method defined outside docl (tests/services/methods/toy_method.py) reaches a real
``docl serve`` through a real ``docl.methods`` entry point — a ``*.dist-info`` with an
``entry_points.txt`` on the server's PYTHONPATH, as ``pip install`` of a plugin package
would leave — and trains a run end to end (``docl.worker.train`` against that server).
The same module named in ``$DOCL_METHODS`` works too. The shared test server, started
without the plugin, refuses the method: the plugin is what made it known."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from docl.client import ScoreClient
from docl.services.embedded import ServerProcess
from docl.worker.train import TrainSpec, train

REPO = Path(__file__).resolve().parents[3]


def _plugin_dist(root: Path) -> Path:
    dist = root / "docl_toy_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: docl-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[docl.methods]\ntoy-parity = tests.services.methods.toy_method:TOY\n"
    )
    return root


def test_a_method_from_an_entry_point_trains_a_run_end_to_end(
    server_factory: Callable[..., ServerProcess], redis_url: str, tmp_path: Path, run_id: str
) -> None:
    site = _plugin_dist(tmp_path / "site")
    server = server_factory(
        redis_url=redis_url,
        env={"PYTHONPATH": f"{site}:{REPO}", "DOCL_KEEP_EPOCHS": "100"},
    )
    names = [m["name"] for m in httpx.get(f"{server.url}/v1/methods").json()["methods"]]
    assert "toy-parity" in names
    result = train(TrainSpec(
        task="tests.worker.user_task:make_task", method="toy-parity", server=server.url,
        run_id=run_id, epochs=5, workers=0, progress=False, checkpoint=False,
        out=str(tmp_path / "out"),
        params={"warmup_epochs": 1, "refresh": False, "k_min": 0.3, "gamma_k": 0.5,
                "parity": 1, "weight": 0.5},
    ))  # fmt: skip
    assert 0.0 <= result["test_accuracy"] <= 1.0
    with ScoreClient(server.url) as c:
        run = c.get_run(run_id)
        assert run.method == "toy-parity" and run.method_params == {"parity": 1, "weight": 0.5}
        n = run.num_samples
        for e in range(1, 5):  # the selection epochs: odd samples first, weight 0.5 each
            ep = c.get_epoch(run_id, e)
            sh = c.shard(run_id, e)
            assert ep.weighted and ep.size <= n // 2
            assert np.all(sh.indices % 2 == 1)
            assert sh.weights is not None and np.all(sh.weights == np.float32(0.5))
        assert run.counters.samples_reported > 0
        c.delete_run(run_id)


def test_docl_methods_env_var_registers_the_method(
    server_factory: Callable[..., ServerProcess], redis_url: str, score_server: str
) -> None:
    r = httpx.post(f"{score_server}/v1/runs", json={
        "num_samples": 10, "num_outputs": 2, "epochs": 2, "method": "toy-parity"})  # fmt: skip
    assert r.status_code == 422 and "unknown method 'toy-parity'" in r.json()["detail"]
    assert "restart `docl serve` with DOCL_METHODS=package.module:METHOD" in r.json()["detail"]
    server = server_factory(
        redis_url=redis_url,
        env={"PYTHONPATH": str(REPO), "DOCL_METHODS": "tests.services.methods.toy_method:TOY"},
    )
    names = [m["name"] for m in httpx.get(f"{server.url}/v1/methods").json()["methods"]]
    assert "toy-parity" in names


def test_a_plugin_may_not_replace_a_builtin_and_a_bad_spec_is_clear(tmp_path: Path) -> None:
    """load_plugins (what `docl serve` runs at start): a plugin named like a built-in, or
    a $DOCL_METHODS entry that is not module:object, fails loudly; nothing is replaced."""
    import pytest

    from docl.services import methods

    mod = tmp_path / "evil_plugin.py"
    mod.write_text(
        "from docl.services.methods import SelectionMethod\n"
        "from docl.services.methods.builtin import BUILTIN\n"
        "FAKE = SelectionMethod(name='docl', draw=BUILTIN[0].draw)\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        before = methods.get_method("docl")
        with pytest.raises(ValueError, match="may not replace the built-in method 'docl'"):
            methods.load_plugins({methods.ENV_VAR: "evil_plugin:FAKE"})
        assert methods.get_method("docl") is before
        with pytest.raises(ValueError, match="'module:object'"):
            methods.load_plugins({methods.ENV_VAR: "evil_plugin"})
    finally:
        sys.path.remove(str(tmp_path))


def test_a_plugin_that_cannot_be_imported_is_one_line_from_serve_and_train(
    tmp_path: Path,
) -> None:
    """docs/methods.md's recipe with the package not importable (not installed, not on
    PYTHONPATH): load_plugins names the entry and the cause, and `docl serve` and
    `docl train` say it in one line (exit 2), not a traceback, before anything starts."""
    import pytest
    from typer.testing import CliRunner

    from docl.client.cli import _register, app
    from docl.services import methods

    env = {methods.ENV_VAR: "no_such_pkg_xyz.selection:METHOD"}
    with pytest.raises(ValueError, match=r"DOCL_METHODS entry 'no_such_pkg_xyz.selection:METHOD'"):
        methods.load_plugins(env)
    _register()
    for args in (
        ["serve", "--port", "0"],
        [
            "train",
            "--task",
            "digits",
            "--method",
            "docl",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "o"),
        ],
    ):
        r = CliRunner().invoke(app, args, env=env)
        assert r.exit_code == 2, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        lines = r.output.strip().splitlines()
        assert len(lines) == 1, r.output
        assert "DOCL_METHODS entry 'no_such_pkg_xyz.selection:METHOD' cannot be loaded" in lines[0]
        assert "No module named 'no_such_pkg_xyz'" in lines[0] and "PYTHONPATH" in lines[0]
    assert not (tmp_path / "o").exists()


def test_the_docs_name_every_built_in_method() -> None:
    """docs/methods.md's table has one row per built-in method (with its size schedule
    and weights), and docs/training.md and docs/api.md name each of them: the lists
    had missed `infobatch-random` after it was added."""
    import re

    from docl.services import methods

    builtin = [methods.get_method(n) for n in sorted(methods._BUILTIN)]  # what docl ships
    docs = Path(__file__).resolve().parents[3] / "docs"
    table = (docs / "methods.md").read_text().split("## Built-in methods", 1)[1]
    rows = {}
    for line in table.split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5:
            for name in re.findall(r"`([a-z-]+)`", cells[0]):
                rows[name] = (cells[2], "yes" in cells[3])
    assert rows == {m.name: (m.size, m.weights) for m in builtin}
    for page in ("training.md", "api.md"):
        named = set(re.findall(r"`([a-z-]+)`", (docs / page).read_text()))
        assert {m.name for m in builtin} <= named, page


def test_a_plugin_next_to_the_user_loads_as_a_task_there_does(tmp_path: Path) -> None:
    """docs/methods.md's recipe run from the folder that holds ``my_pkg/`` (as a
    console script such as `docl` runs: its sys.path has its own folder, not the
    working directory): $DOCL_METHODS finds the module, as `--task my_pkg.data:…` does."""
    import os
    import subprocess
    import sys

    here = tmp_path / "project"
    (here / "cwd_pkg").mkdir(parents=True)
    (here / "cwd_pkg" / "__init__.py").write_text("")
    (here / "cwd_pkg" / "selection.py").write_text(
        "from docl.services.methods import SelectionMethod\n"
        "from docl.services.methods.builtin import BUILTIN\n"
        "METHOD = SelectionMethod(name='cwd-top', draw=BUILTIN[0].draw)\n"
    )
    script = tmp_path / "bin" / "probe.py"  # a script elsewhere, like a console script
    script.parent.mkdir()
    script.write_text("from docl.services import methods\nprint(methods.load_plugins())\n")
    env = {**os.environ, "DOCL_METHODS": "cwd_pkg.selection:METHOD"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(
        [sys.executable, str(script)], cwd=here, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "['cwd-top']"
