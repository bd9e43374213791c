"""The wheel holds every module of the five import packages, their data files
and the `docl` entry point (the package-dir mapping is easy to get wrong: a
sub-package left out of ``packages`` installs fine in editable mode and is
missing from the wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "wire": "docl/wire",
    "services": "docl/services",
    "worker": "docl/worker",
    "client": "docl/client",
    "lab": "docl/lab",
}


def _expected_files() -> set[str]:
    """Every .py, .lua and py.typed file under the mapped folders, as wheel paths."""
    want: set[str] = set()
    for folder, target in PACKAGES.items():
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in (".py", ".lua") or path.name == "py.typed":
                want.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return want


def test_the_wheel_holds_every_module_and_the_entry_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    keep = ["pyproject.toml", "README.md", *PACKAGES]
    src.mkdir()
    for name in keep:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # No build isolation: the venv's setuptools, no download.
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("docl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(info).decode()
    want = _expected_files()
    assert len(want) > 60  # the walk found the tree
    missing = sorted(want - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    stray = sorted(n for n in names if n.startswith(("tests/", "docs/", "deploy/", "examples/")))
    assert not stray, f"files that do not belong in the wheel: {stray}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        assert f"{name} = {target}" in entry_points, entry_points
