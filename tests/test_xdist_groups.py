"""``make test``'s grouping (tests/conftest.py) on a real ``pytest -n 2 --dist loadgroup``:
the Ray tests (marked ``ray`` or taking ``ray_cluster``) all run on one worker, and so
do the tests of another ``xdist_group``. Under pytest 9.2 xdist's own suffix no longer
changed the node id (pytest-dev/pytest-xdist#1386) and the group was silently ignored:
the tests spread over both workers. A run here of 12 one-line tests, in a temp dir
whose conftest is the suite's own hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import pytest_collection_modifyitems, pytest_configure  # noqa: F401
import pytest

@pytest.fixture
def ray_cluster():
    return "not Ray: only the fixture's name counts"
"""

TESTS = """
import json, os, pytest

def _where(request):
    with open(os.environ["WHERE"], "a") as f:
        f.write(json.dumps([request.node.name, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")

@pytest.mark.ray
@pytest.mark.parametrize("i", range(3))
def test_marked(request, i): _where(request)

def test_fixture(request, ray_cluster): _where(request)

@pytest.mark.xdist_group("other")
@pytest.mark.parametrize("i", range(2))
def test_other(request, i): _where(request)

@pytest.mark.parametrize("i", range(6))
def test_free(request, i): _where(request)
"""


def test_the_ray_tests_and_each_xdist_group_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_groups.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  ray: Ray\n")
    where = tmp_path / "where.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "--strict-markers", "-rA", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={**os.environ, "WHERE": str(where)},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for line in where.read_text().splitlines():
        name, worker = json.loads(line)
        workers[name.split("[")[0]].add(worker)
    assert sum(1 for _ in where.read_text().splitlines()) == 12
    assert len(workers["test_marked"] | workers["test_fixture"]) == 1, dict(workers)
    assert len(workers["test_other"]) == 1, dict(workers)
    # both workers had work: the grouping is what kept the groups together
    assert len(set().union(*workers.values())) == 2, dict(workers)
    # the scheduler's input: the group as a suffix of the node id
    assert "test_marked[0]@ray" in r.stdout and "test_other[0]@other" in r.stdout, r.stdout
