"""`docl train` end to end through the real CLI (a subprocess), server started by the command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest


def _docl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_docl_train_starts_its_own_server_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _docl(
        "train", "--task", "digits", "--method", "docl", "--workers", "0",
        "--epochs", "4", "-p", "warmup_epochs=2", "-p", "episode_epochs=1",
        "--param", "batch_size=64", "--seed", "3", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test_accuracy" in r.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "docl" and result["task"] == "digits" and result["seed"] == 3
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["params"]["warmup_epochs"] == 2 and result["params"]["batch_size"] == 64
    assert result["reporter"]["sent"] == result["batches"] > 0
    assert result["reporter"]["dropped"] == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1, 2, 3]
    assert [m["phase"] for m in lines] == ["warmup", "warmup", "select", "refresh"]
    assert lines[-1]["batches"] == result["batches"]
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in lines)
    log = (out / "server.log").read_text()  # the job's own server, stopped at the end
    assert "Uvicorn running on http://127.0.0.1:" in log, log
    assert "embedded redis-server at unix://" in log and "removed at exit" in log, log
    assert "Shutting down" in log, log
    epoch_lines = [x for x in r.stdout.splitlines() if x.startswith("epoch ")]
    assert len(epoch_lines) == 4 and all(" wall " in x for x in epoch_lines), r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "tau=-1"], "tau"),
        (["-p", "no_such=1"], "unknown --param no_such"),
        (["-p", "tau"], "KEY=VALUE"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--method", "best"], "unknown method 'best'"),
        (["--method", "docl", "--local"], "only draw uniformly"),
        (["--method", "infobatch", "-p", "prune_ratio=2"], "method_params for method 'infobatch'"),
        (["--method", "docl", "-p", "prune_ratio=0.3"], "unknown --param prune_ratio"),
        (["--task-param", "noise=2", "--task", "synthetic"], "noise"),
    ],
)
def test_docl_train_rejects_bad_arguments_clearly(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # Bad input fails before any server or Ray starts, so the in-process runner
    # is enough here; the end-to-end test above runs the real command.
    from typer.testing import CliRunner

    from docl.client.cli import _register, app

    _register()
    r = CliRunner().invoke(
        app, ["train", "--workers", "0", "--task", "digits", "--out", str(tmp_path), *args]
    )
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--workers", "0", "--task", "digits", "--gpu"], "sees no CUDA device"),
        (["bench", "overhead", "--task", "digits", "--gpu"], "sees no CUDA device"),
        (["bench", "overhead", "--task", "digits", "--method", "docl"], "draws uniformly"),
    ],
)
def test_gpu_without_cuda_and_a_curriculum_overhead_are_refused(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process GPU training on a process without CUDA fails before anything
    starts (CUDA's absence is forced, so this holds on a GPU machine too)."""
    import torch
    from typer.testing import CliRunner

    from docl.client.cli import _register, app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _register()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_a_server_that_does_not_answer_fails_fast_in_a_few_lines(tmp_path: Path) -> None:
    """A wrong or unstarted --server is a typo until proven otherwise: the real
    command (default: one Ray worker) exits non-zero within 15 s, in at most 3
    lines, before any Ray starts or any file is written."""
    import time

    out = tmp_path / "out"
    t0 = time.monotonic()
    r = _docl("train", "--server", "http://127.0.0.1:1", "--out", str(out), timeout=60)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert took < 15, f"took {took:.1f} s"
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, r.stderr
    assert "no score server answers at http://127.0.0.1:1" in r.stderr
    assert "docl serve" in r.stderr  # says what to do
    assert not out.exists()


def test_a_server_address_that_is_not_a_docl_server_is_named(tmp_path: Path) -> None:
    """Something answers, but not docl (here: a plain HTTP server with no /healthz)."""
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        r = _docl(
            "train", "--server", url, "--workers", "0", "--out", str(tmp_path / "o"), timeout=60
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert r.returncode == 2
    assert f"{url} answers, but not as a docl score server (GET /healthz: HTTP 404)" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr


def test_a_method_the_server_does_not_know_is_one_line_not_a_traceback(
    score_server: str, tmp_path: Path
) -> None:
    """With --server the server's registry decides (it may hold plugins this
    machine lacks): its 422 reaches the user as one line, exit 2, no folder left."""
    out = tmp_path / "o"
    r = _docl(
        "train", "--server", score_server, "--workers", "0", "--task", "digits",
        "--method", "docll", "--out", str(out), timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"docl train: the score server at {score_server} refused run")
    assert "unknown method 'docll'; known: random," in lines[0]
    assert not out.exists()


def test_a_server_that_needs_a_token_says_how_to_give_one(
    server_factory: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from docl.client.cli import _register, app

    url = server_factory(env={"DOCL_API_TOKEN": "s3cret"}).url
    _register()
    r = CliRunner().invoke(
        app,
        ["train", "--server", url, "--workers", "0", "--task", "digits", "--out", str(tmp_path)],
        env={"DOCL_API_TOKEN": None},
    )
    assert r.exit_code == 2, r.output
    assert "needs 'Authorization: Bearer <token>'" in r.output
    assert r.output.rstrip().endswith("(give it with --token or DOCL_API_TOKEN)"), r.output


def test_train_from_python_probes_the_server_too(tmp_path: Path) -> None:
    from docl.worker.train import TrainError, TrainSpec, train

    with pytest.raises(
        TrainError, match=re.escape("no score server answers at http://127.0.0.1:1")
    ):
        train(TrainSpec(task="digits", server="http://127.0.0.1:1", out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_a_budget_that_ends_in_the_warmup_warns_and_a_used_out_is_refused(
    tmp_path: Path,
) -> None:
    """`--epochs 2` ends in DoCL's 5 warmup epochs: the run trains like random SGD, and the
    command says so (on stderr, beside the result) instead of reporting "docl on digits"
    silently. The same --out again is refused (its outputs would be overwritten without
    a word) until --overwrite, which replaces them."""
    out = tmp_path / "o"
    args = ("train", "--task", "digits", "--method", "docl", "--workers", "0", "--epochs", "2",
            "--no-progress", "--out", str(out))  # fmt: skip
    r = _docl(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(docl on digits, seed 0)" in r.stdout
    warned = [x for x in r.stderr.splitlines() if "before its first selection epoch" in x]
    assert len(warned) == 2, r.stderr  # when it starts, and again beside the result
    assert "all 2 epochs" in warned[0] and "Selection starts after" in warned[0]
    assert json.loads((out / "result.json").read_text())["warnings"]
    first = (out / "result.json").read_text()

    again = _docl(*args)
    assert again.returncode == 2, again.stderr
    assert f"{out} holds the outputs of an earlier job" in again.stderr
    assert "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (out / "result.json").read_text() == first  # untouched

    (out / "ray").mkdir()  # a Ray run's storage from before: replaced, not piled up
    (out / "ray" / "old-run").mkdir()
    over = _docl(*args, "--overwrite")
    assert over.returncode == 0, over.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["run_id"] != json.loads(first)["run_id"]
    assert not (out / "ray").exists()


def test_no_warning_where_selection_happens_or_the_method_is_uniform() -> None:
    from docl.worker.tasks import get_task
    from docl.worker.train import TrainSpec, build_run, no_selection_warning

    data = get_task("digits")
    for method, epochs, warns in [("docl", 5, True), ("docl", 6, False), ("random", 2, False),
                                  ("infobatch", 3, True)]:  # fmt: skip
        run = build_run(TrainSpec(task="digits", method=method, epochs=epochs), data)
        assert (no_selection_warning(run) is not None) == warns, (method, epochs)
    run = build_run(TrainSpec(task="digits", method="docl", budget_batches=100), data)
    assert no_selection_warning(run) is not None


def test_ctrl_c_says_what_was_kept_and_marks_the_partial_job(tmp_path: Path) -> None:
    """SIGINT mid-run: exit 130, one line naming the epochs kept in metrics.jsonl, an
    interrupted.json marker and no result.json (before: rc 130, a traceback, no word)."""
    from tests.cli_interrupt import interrupt_docl

    out = tmp_path / "o"
    rc, output, _ = interrupt_docl(
        "train", "--task", "digits", "--method", "docl", "--workers", "0", "--epochs", "200",
        "--no-progress", "--out", str(out), when=lambda line: line.startswith("epoch   1 "),
    )  # fmt: skip
    assert rc == 130, output[-3000:]
    assert "Traceback" not in output, output
    (said,) = [x for x in output.splitlines() if "interrupted after" in x]
    marker = json.loads((out / "interrupted.json").read_text())
    assert marker["interrupted"] is True and marker["epochs"] >= 1
    kept = (out / "metrics.jsonl").read_text().splitlines()
    assert len(kept) == marker["epochs"]
    assert f"interrupted after {marker['epochs']} finished epoch(s)" in said
    assert "--overwrite" in said and not (out / "result.json").exists()


def test_ctrl_c_the_trainer_misses_still_stops_the_job_when_its_server_stopped(
    tmp_path: Path,
) -> None:
    """The trainer process misses the Ctrl-C (here: SIGINT ignored, as a background job
    of a script inherits it) while its own docl serve and Redis, in the same process
    group, stop on it. Before, the job went on training, then waited out the outage
    tolerance (120 s) for a server that no longer existed, or its end-of-epoch flush
    (300 s); now it sees that its server has exited and stops as interrupted within
    seconds: exit 130, the same line and marker as a Ctrl-C it got itself."""
    from tests.cli_interrupt import interrupt_docl

    out = tmp_path / "o"
    t0 = time.monotonic()
    rc, output, _ = interrupt_docl(
        "train", "--task", "digits", "--method", "docl", "--workers", "0", "--epochs", "400",
        "--no-progress", "--out", str(out), when=lambda line: line.startswith("epoch   1 "),
        ignore_sigint=True,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert rc == 130, output[-3000:]
    assert "Traceback" not in output, output
    (said,) = [x for x in output.splitlines() if "interrupted after" in x]
    marker = json.loads((out / "interrupted.json").read_text())
    assert marker["interrupted"] is True and marker["epochs"] >= 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == marker["epochs"]
    assert f"interrupted after {marker['epochs']} finished epoch(s)" in said
    assert marker["epochs"] < 400 and not (out / "result.json").exists()
    assert took < 60, f"{took:.0f} s: {output[-3000:]}"


@pytest.mark.slow
@pytest.mark.ray
def test_a_ray_run_says_it_starts_ray_writes_no_ansi_escapes_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    """Through Ray the command printed nothing for the ~20 s of Ray's start-up; the
    workers' lines reached a pipe with ANSI colour escapes around their prefix; and
    Ctrl-C (SIGINT to the process group, as a terminal sends it) ended with status 1
    and no word, Ray Train's own handler having aborted the run."""
    from tests.cli_interrupt import interrupt_docl

    out = tmp_path / "o"
    rc, output, lines = interrupt_docl(
        "train", "--task", "digits", "--method", "docl", "--workers", "1", "--epochs", "300",
        "--no-progress", "--out", str(out), when=lambda line: "epoch   2 " in line,
    )  # fmt: skip
    assert lines[0].startswith("docl train: starting a local Ray"), output[-3000:]
    assert "(RayTrainWorker pid=" in output
    assert "\x1b[" not in output
    assert "Traceback" not in output, output[-3000:]
    assert rc == 130, output[-3000:]
    assert "docl train: interrupted after " in output and "--overwrite" in output
    marker = json.loads((out / "interrupted.json").read_text())
    assert marker["epochs"] >= 2 and not (out / "result.json").exists()


def test_the_ray_sigint_wrapper_notes_a_ctrl_c_and_puts_the_callers_handler_back() -> None:
    """Ray Train's fit() installs its own SIGINT handler and leaves it installed; the
    full suite showed every in-process Ray run leaving it behind (a later Ctrl-C went
    to a finished run's handler). Simulated here as fit() does it: signal.signal inside."""
    import signal

    from docl.worker.launcher import noting_sigint

    before = signal.getsignal(signal.SIGINT)
    called: list[int] = []
    with noting_sigint() as note:
        signal.signal(signal.SIGINT, lambda signum, frame: called.append(signum))
        handler = signal.getsignal(signal.SIGINT)
        assert callable(handler)
        handler(signal.SIGINT, None)  # what a Ctrl-C during fit() runs
    assert note.seen and called == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before
