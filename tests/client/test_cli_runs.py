"""`docl runs` and `docl plot` against a REAL score server (typer's CliRunner invokes;
the server is the shared ``docl serve`` child process)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from docl.client import ScoreClient
from docl.client.cli import _register, app

_register()
runner = CliRunner()


@pytest.fixture
def populated(score_server: str, run_id: str) -> Iterator[tuple[str, str]]:
    """A run with two epochs reported, so it has visits, lr-sums and some scores."""
    with ScoreClient(score_server) as c:
        c.create_run(
            run_id=run_id, num_samples=25, num_outputs=3, epochs=5, task_name="mnist1d",
            params={"batch_size": 5, "warmup_epochs": 2},
        )  # fmt: skip
        rng = np.random.default_rng(0)
        for e in range(2):
            ep = c.draw_epoch(run_id, e)
            idx = c.indices(run_id, e)
            for s, b in enumerate(np.array_split(idx, ep.steps)):
                c.report(run_id, epoch=e, indices=b, outputs=rng.normal(size=(len(b), 3)), targets=b % 3,
                         lr_sum=ep.lr_sum_start + sum(ep.lr[:s]))  # fmt: skip
    yield score_server, run_id
    with ScoreClient(score_server) as c:
        c.delete_run(run_id, missing_ok=True)


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_runs_list_shows_the_run(populated: tuple[str, str]) -> None:
    server, run_id = populated
    table = invoke("runs", "list", "--server", server)
    assert run_id in table and "docl" in table and "2/5" in table  # epochs drawn / planned
    row = next(line for line in table.splitlines() if run_id in line)
    assert "mnist1d" in row and "classification" not in row  # the task's name, not its kind
    runs = json.loads(invoke("runs", "list", "--server", server, "--json"))
    mine = [r for r in runs if r["run_id"] == run_id]
    assert len(mine) == 1 and mine[0]["counters"]["reports"] == 10


def test_runs_show_prints_config_counters_stats_and_plan(populated: tuple[str, str]) -> None:
    server, run_id = populated
    text = invoke("runs", "show", run_id, "--server", server, "--plan")
    assert run_id in text and "reports 10" in text and "score quantiles" in text
    assert "plan: 5 epochs" in text and "warmup" in text and "select" in text
    doc = json.loads(invoke("runs", "show", run_id, "--server", server, "--json", "--plan"))
    with ScoreClient(server) as c:
        stats = c.stats(run_id)
    assert doc["stats"]["scored"] == stats.scored == 25  # every sample seen in both warmup epochs
    assert doc["run"]["epochs_drawn"] == 2 and len(doc["plan"]["epochs"]) == 5


def test_runs_export_npz_and_csv_match_the_server(
    populated: tuple[str, str], tmp_path: Path
) -> None:
    server, run_id = populated
    npz, csv_path = tmp_path / "out" / "s.npz", tmp_path / "s.csv"
    out = invoke(
        "runs",
        "export",
        run_id,
        "--server",
        server,
        "-o",
        str(npz),
        "--csv",
        str(csv_path),
        "--page-size",
        "7",
    )  # fmt: skip  (several pages)
    assert "25 samples" in out
    with ScoreClient(server) as c:
        ref = c.scores(run_id)
    data = np.load(npz)  # no pickle needed
    assert data["sample"].tolist() == list(range(25))
    np.testing.assert_array_equal(data["scores"], ref.scores)
    np.testing.assert_array_equal(data["visits"], ref.visits)
    np.testing.assert_array_equal(data["lr_sums"], ref.lr_sums)
    assert json.loads(str(data["run"]))["run_id"] == run_id
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["sample"]) for r in rows] == list(range(25))
    assert [int(r["visits"]) for r in rows] == ref.visits.tolist()
    for r, s, lr in zip(rows, ref.scores.tolist(), ref.lr_sums.tolist(), strict=True):
        assert (r["score"] == "") == np.isnan(s)
        if r["score"]:
            assert float(r["score"]) == s
        assert float(r["lr_sum"]) == lr


def test_runs_delete_and_errors_exit_1_with_the_servers_detail(populated: tuple[str, str]) -> None:
    server, run_id = populated
    assert "deleted" in invoke("runs", "delete", run_id, "--server", server, "--yes")
    res = runner.invoke(app, ["runs", "show", run_id, "--server", server])
    assert res.exit_code == 1 and "404" in res.output and run_id in res.output
    assert "did not exist" in invoke(
        "runs", "delete", run_id, "--server", server, "-y", "--missing-ok"
    )
    res = runner.invoke(
        app, ["runs", "list", "--server", "http://127.0.0.1:9"]
    )  # nothing listens on 9
    assert res.exit_code == 1 and "cannot reach" in res.output
    assert "start one with `docl serve`, or name yours with --server" in res.output


def test_plot_scores_and_metrics_write_pngs(populated: tuple[str, str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    server, run_id = populated
    png = tmp_path / "scores.png"
    invoke("plot", "scores", run_id, "--server", server, "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:  # default: out/RUN/scores.png, not ./scores.png
        mp.chdir(cwd)
        assert f"out/{run_id}/scores.png" in invoke("plot", "scores", run_id, "--server", server)
    assert (cwd / "out" / run_id / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]
    # two seeds of one method (mean ± std) and one of another, as `docl train --out` leaves them
    for name, method, acc in (("a", "docl", 0.5), ("b", "docl", 0.6), ("c", "random", 0.4)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"epoch": e, "batches": 10 * e, "test_accuracy": acc + 0.05 * e} for e in range(4)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "result.json").write_text(json.dumps({"method": method, "test_accuracy": acc}))
    curves = tmp_path / "acc.png"
    out = invoke("plot", "metrics", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c" / "metrics.jsonl"),
                 "--label", "method", "-o", str(curves))  # fmt: skip
    assert "3 run(s), 2 line(s)" in out and curves.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(
        app, ["plot", "metrics", str(tmp_path / "a"), "--y", "nope", "-o", str(curves)]
    )
    assert res.exit_code != 0 and "test_accuracy" in res.output  # names the keys it has


def _train_out(d: Path, task: str, method: str, seed: int, accs: list[float]) -> None:
    """What `docl train --out d` leaves: metrics.jsonl (one row per epoch) and result.json."""
    d.mkdir(parents=True)
    rows = [{"epoch": e, "batches": 75 * (e + 1), "test_accuracy": a} for e, a in enumerate(accs)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {"task": task, "method": method, "seed": seed, "test_accuracy": accs[-1]}
    (d / "result.json").write_text(json.dumps(result))


def test_plot_metrics_draws_one_labelled_line_per_run_into_the_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's `docl plot metrics out/*/metrics.jsonl`: one line per run even
    where two runs share a method, named by task, method and seed; the PNG lands
    beside the runs, not in the current directory; a failed run's empty (or
    broken) metrics.jsonl is skipped with a warning."""
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "out"
    _train_out(out_dir / "demo", "mnist1d", "docl", 0, [0.4, 0.7, 0.9])
    _train_out(out_dir / "digits", "digits", "docl", 0, [0.5, 0.8, 0.95])
    _train_out(out_dir / "digits-s1", "digits", "docl", 1, [0.55, 0.85, 0.96])
    (out_dir / "failed").mkdir()
    (out_dir / "failed" / "metrics.jsonl").write_text("")
    (out_dir / "broken").mkdir()
    (out_dir / "broken" / "metrics.jsonl").write_text('{"epoch": 0, "batches": 7\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    files = sorted(str(p) for p in out_dir.glob("*/metrics.jsonl"))
    res = runner.invoke(app, ["plot", "metrics", *files])
    assert res.exit_code == 0, res.output
    assert "3 run(s), 3 line(s)" in res.stdout
    lines = [x.strip() for x in res.stdout.splitlines()[1:]]
    assert lines == ["digits · docl · seed 0", "digits · docl · seed 1", "mnist1d · docl · seed 0"]
    assert f"warning: skipped {out_dir / 'failed' / 'metrics.jsonl'}: empty" in res.stderr
    assert (
        f"warning: skipped {out_dir / 'broken' / 'metrics.jsonl'}: line 1 is not JSON" in res.stderr
    )
    png = out_dir / "metrics.png"
    assert f"wrote {png}" in res.stdout and png.read_bytes()[:4] == b"\x89PNG"
    assert list(cwd.iterdir()) == []  # nothing in the current directory
    # two runs with the same task, method and seed stay two lines, told apart by directory
    _train_out(tmp_path / "again" / "demo", "mnist1d", "docl", 0, [0.4, 0.7, 0.8])
    res = runner.invoke(app, ["plot", "metrics", str(out_dir / "demo"), str(tmp_path / "again" / "demo"), "-o", str(tmp_path / "two.png")])  # fmt: skip
    assert res.exit_code == 0 and "2 run(s), 2 line(s)" in res.stdout, res.output
    # nothing left to plot: one clear line, non-zero
    res = runner.invoke(app, ["plot", "metrics", files[-1]])  # the empty one
    assert res.exit_code == 1 and "nothing to plot" in res.stderr


def test_runs_list_keeps_a_long_run_id_on_one_line(score_server: str, run_id: str) -> None:
    """People copy the id into the next command: the table never folds it."""
    long_id = (run_id + "-" + "x" * 64)[:64]
    with ScoreClient(score_server) as c:
        c.create_run(run_id=long_id, num_samples=5, num_outputs=2, epochs=2)
    try:
        table = invoke("runs", "list", "--server", score_server)
        assert long_id in table
    finally:
        with ScoreClient(score_server) as c:
            c.delete_run(long_id, missing_ok=True)


def test_a_missing_or_wrong_token_says_how_to_give_one(server_factory: Any) -> None:
    url = server_factory(env={"DOCL_API_TOKEN": "s3cret"}).url
    for extra, detail in (([], "needs 'Authorization: Bearer"), (["--token", "x"], "wrong")):
        r = runner.invoke(
            app, ["runs", "list", "--server", url, *extra], env={"DOCL_API_TOKEN": None}
        )
        assert r.exit_code == 1, r.output
        assert detail in r.output and "(give it with --token or DOCL_API_TOKEN)" in r.output
    r = runner.invoke(app, ["runs", "list", "--server", url, "--token", "s3cret"])
    assert r.exit_code == 0, r.output


def test_runs_list_follows_every_page(redis_factory: Any, server_factory: Any) -> None:
    url = server_factory(redis_url=redis_factory().url).url
    ids = [f"cli-page-{i}" for i in range(5)]
    with ScoreClient(url) as c:
        for rid in ids:
            c.create_run(run_id=rid, num_samples=10, num_outputs=2, epochs=2)
    r = runner.invoke(app, ["runs", "list", "--server", url, "--page-size", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert [x["run_id"] for x in json.loads(r.output)] == ids
    r = runner.invoke(app, ["runs", "list", "--server", url, "--page-size", "2"])
    assert r.exit_code == 0 and "5 run(s)" in r.output, r.output


def test_plot_metrics_over_runs_of_two_tasks_and_a_scores_folder(
    score_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client.md's `docl plot metrics out/mnist1d-* … --label method`: one line per task
    and method (`--label method` averaged two tasks into one line), and a folder that
    `docl plot scores RUN` made (out/RUN/scores.png, no metrics.jsonl) is skipped with a
    warning instead of failing the command. `docl plot scores` of a run that is not on
    the server says why (a `docl train` run without --server: its server is gone)."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _train_out(out / "mnist1d-docl-s0-aa", "mnist1d", "docl", 0, [0.4, 0.7])
    _train_out(out / "mnist1d-docl-s1-bb", "mnist1d", "docl", 1, [0.5, 0.8])
    _train_out(out / "digits-docl-s0-cc", "digits", "docl", 0, [0.6, 0.9])
    (out / "digits-docl-s0-cc" / "result.json").write_text(
        json.dumps({"task": "digits", "method": "docl", "seed": 0, "server": None})
    )
    (out / "some-run").mkdir()
    (out / "some-run" / "scores.png").write_bytes(b"\x89PNG")
    dirs = sorted(str(p) for p in out.iterdir())
    res = runner.invoke(app, ["plot", "metrics", *dirs, "--label", "method", "-o", "acc.png"])
    assert res.exit_code == 0, res.output
    assert "3 run(s), 2 line(s)" in res.stdout
    assert [x.strip() for x in res.stdout.splitlines()[1:]] == ["digits · docl", "mnist1d · docl"]
    assert f"warning: skipped {out / 'some-run'}: no metrics.jsonl in it" in res.stderr
    res = runner.invoke(app, ["plot", "scores", "digits-docl-s0-cc", "--server", score_server])
    assert res.exit_code == 1
    assert "run 'digits-docl-s0-cc' does not exist on the score server" in res.stderr
    assert "trained without --server: that job's own score server" in res.stderr
    assert "start `docl serve` and train with --server" in res.stderr
