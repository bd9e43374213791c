"""Static checks of deploy/docker/Dockerfile and .dockerignore.

The tests do not build the image (.ci/run builds it before `make test`, and
tests/deploy/test_compose_docker.py runs it); what can be checked without
building it is checked here: the stages, every
file COPY'd exists and reaches the build context, the user is not root, the
CMD and HEALTHCHECK are exec form and name real commands and routes, and the
pinned versions agree with the rest of the repository.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.deploy.deploy_util import (
    DOCKERFILE,
    REPO,
    VENV_BIN,
    Instruction,
    app_routes,
    console_scripts,
    dockerfile_args,
    dockerfile_env,
    dockerignore_excludes,
    dockerignore_patterns,
    host_port,
    option_value,
    parse_command,
    parse_dockerfile,
)

INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def _final_stage() -> list[Instruction]:
    last = max(i.stage for i in INSTRUCTIONS)
    return [i for i in INSTRUCTIONS if i.stage == last]


def _one(keyword: str) -> Instruction:
    found = [i for i in _final_stage() if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def test_multi_stage_and_the_runtime_stage_copies_only_from_the_build_stage() -> None:
    froms = [i for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    names = {m.group(1) for f in froms if (m := re.search(r"\bAS\s+(\S+)", f.args, re.I))}
    final = _final_stage()
    copies_from = [i for i in final if i.keyword == "COPY" and "--from=" in i.args]
    assert copies_from, "the runtime stage copies the installed environment from the build stage"
    for ins in copies_from:
        stage = ins.flags()["from"]
        assert stage in names, f"COPY --from={stage} names no stage (stages: {sorted(names)})"
    # Nothing is compiled or pip-installed in the runtime stage.
    assert not any(i.keyword == "RUN" and "pip install" in i.args for i in final)


def test_every_copied_source_exists_and_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    sources: list[str] = []
    for ins in INSTRUCTIONS:
        if ins.keyword != "COPY" or "--from=" in ins.args:
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        assert len(words) >= 2, f"COPY without a destination: {ins.args}"
        sources += words[:-1]
    assert sources, "the Dockerfile copies the project into the image"
    for src in sources:
        path = REPO / src
        assert path.exists(), f"COPY {src}: no such file in the repository"
        assert not dockerignore_excludes(src, patterns), f".dockerignore excludes {src}"
        if path.is_dir():
            for f in path.rglob("*.py"):
                rel = f.relative_to(REPO).as_posix()
                if "__pycache__" not in rel:
                    assert not dockerignore_excludes(rel, patterns), f".dockerignore excludes {rel}"


def test_the_build_context_has_everything_pip_install_needs() -> None:
    """`pip install .` reads pyproject.toml, the readme it names and every package dir."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = " ".join(i.args for i in INSTRUCTIONS if i.keyword == "COPY")
    needed = {pyproject["project"]["readme"], "pyproject.toml"}
    needed |= {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    for item in needed:
        assert re.search(rf"(^|\s){re.escape(item)}/?(\s|$)", copied), (
            f"the image never copies {item}"
        )
        assert (REPO / item).exists(), f"{item} is missing from the repository"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "out/demo/x.json",
        "tests/deploy/x.py",
        "services/__pycache__/a.pyc",
        "data/dump.rdb",
    ):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the build context"


def test_runs_as_a_numeric_non_root_user() -> None:
    user = _one("USER").args.split(":")[0]
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    assert int(user) != 0


def test_cmd_is_exec_form_and_a_real_command() -> None:
    argv = _one("CMD").exec_form()
    assert argv is not None, "CMD must be exec form (a JSON array): signals reach the process"
    assert argv[0] in console_scripts(), f"{argv[0]} is not a console script the image installs"
    parsed = parse_command(argv)
    assert parsed.path == ("docl", "serve")


def test_healthcheck_is_exec_form_and_hits_a_real_route_on_the_served_port() -> None:
    hc = _one("HEALTHCHECK")
    argv = hc.exec_form()
    assert argv is not None, "HEALTHCHECK CMD must be exec form"
    url = re.search(r"https?://[^'\"\s]+", " ".join(argv))
    assert url is not None, f"no URL in the healthcheck {argv}"
    host, port = host_port(url.group(0))
    path = "/" + url.group(0).split("/", 3)[3]
    cmd = _one("CMD").exec_form()
    assert cmd is not None
    assert port == int(option_value(cmd, "--port") or 0), "healthcheck port != the CMD's --port"
    assert host in ("127.0.0.1", "localhost")
    assert ("GET", path) in app_routes(), f"{path} is not a route of the score server"
    exposed = {int(p.split("/")[0]) for p in _one("EXPOSE").args.split()}
    assert port in exposed


def test_pinned_versions_agree_with_the_rest_of_the_repository() -> None:
    args = dockerfile_args(INSTRUCTIONS)
    makefile = (REPO / "Makefile").read_text()
    pin = re.search(r"torch==([0-9][^\s'\"]*)", makefile)
    assert pin is not None, "the Makefile pins the CPU torch build"
    assert args["TORCH_VERSION"] == pin.group(1), (
        "Dockerfile TORCH_VERSION != the Makefile's torch pin"
    )
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", "CPU torch by default"
    # The flags of `ray start` / `ray job submit` in the compose file and the
    # manifests are checked against the Ray installed here: it must be the
    # Ray the image installs.
    assert args["RAY_VERSION"] == version("ray"), (
        f"Dockerfile RAY_VERSION={args['RAY_VERSION']} but this environment has ray {version('ray')}"
    )
    assert args["PYTHON_VERSION"] == "3.11"


@pytest.mark.parametrize("keyword", ["CMD", "ENTRYPOINT"])
def test_no_shell_form_process_instructions(keyword: str) -> None:
    for ins in INSTRUCTIONS:
        if ins.keyword == keyword:
            assert ins.exec_form() is not None, f"{keyword} {ins.args} is shell form"


def test_login_shells_find_the_virtualenv(tmp_path: Path) -> None:
    """KubeRay runs Ray containers as `/bin/bash -lc …`; Debian's /etc/profile (the
    base image's, and this machine's) resets PATH in a login shell. The image's
    /etc/profile.d script must put the virtualenv back in front, or `ray` and
    `docl` are not found. Replayed here with this machine's /etc/profile and this
    repository's virtualenv standing in for /opt/docl."""
    venv = dockerfile_env(INSTRUCTIONS)["VIRTUAL_ENV"]
    runs = [i.args for i in _final_stage() if i.keyword == "RUN" and "/etc/profile.d/" in i.args]
    assert len(runs) == 1, "one RUN writes the /etc/profile.d script"
    m = re.search(r"printf '(?P<body>[^']*)' > (?P<path>/etc/profile\.d/[\w.-]+\.sh)", runs[0])
    assert m is not None, runs[0]
    body = m["body"].replace("\\n", "\n").replace(venv, str(VENV_BIN.parent))
    script = tmp_path / "docl-venv.sh"
    script.write_text(body)
    shell = (
        "PATH=/usr/bin:/bin; "
        "[ -r /etc/profile ] && . /etc/profile; "  # what a login shell runs first
        f". {script}; command -v ray; command -v docl"
    )
    out = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", shell],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path)},
        timeout=30,
    )
    found = out.stdout.split()
    assert found == [str(VENV_BIN / "ray"), str(VENV_BIN / "docl")], (out.stdout, out.stderr)
