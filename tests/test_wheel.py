"""The release files: ``python -m build`` makes a wheel and an sdist, and the wheel works alone.

The wheel is installed into a fresh virtual environment and ``mlsec audit`` runs from it, outside
the repository, so the bundled weights and data must really be inside the wheel. To avoid
reinstalling torch, the fresh environment borrows this environment's site-packages through a
``.pth`` file; its own site-packages comes first on ``sys.path``, so ``mlsec`` resolves to the
installed wheel (checked below), never to the repository or to this environment's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("mnist-cnn", "mnist-cnn-pgd")  # what `mlsec audit` audits without --model
# Top-level entries of the checkout that are not sources: environments, caches, build outputs.
NOT_SOURCES = {".git", ".venv", "build", "dist", "out", "site", ".benchmarks", ".hypothesis"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {
        name
        for name in names
        if (top and name in NOT_SOURCES)
        or name == "__pycache__"
        or name.endswith((".egg-info", "_cache", ".pyc"))
    }


def _run(command: list[str | Path], cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # Build from a clean copy: an in-tree build/ folder can carry stale files into the wheel.
    work = tmp_path_factory.mktemp("build")
    source, out = work / "source", work / "dist"
    shutil.copytree(ROOT, source, ignore=_ignore)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source], cwd=work)
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_holds_the_package_data_and_metadata(dists: tuple[Path, Path]) -> None:
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        (metadata_name,) = [name for name in sizes if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    bundled = [
        *sorted(ROOT.glob("mlsec/zoo/weights/*.safetensors")),
        ROOT / "mlsec/_data/mnist_sample.npz",
        ROOT / "mlsec/_data/mnist_members.npz",
        ROOT / "mlsec/py.typed",
    ]
    assert len(bundled) > 5  # the glob found the weights
    for file in bundled:
        name = file.relative_to(ROOT).as_posix()
        assert name in sizes, f"{name} is missing from the wheel"
        assert sizes[name] == file.stat().st_size, f"{name} differs from the source tree's"
    assert metadata["Name"] == "mlsec-audit"
    assert "Apache-2.0" in (metadata["License-Expression"] or metadata["License"] or "")
    assert metadata["License-File"] == "LICENSE"
    assert metadata_name.replace("METADATA", "licenses/LICENSE") in sizes
    assert metadata.get_all("Requires-Dist")  # torch and friends are declared
    assert not any(name.startswith("tests/") for name in sizes)


def test_sdist_holds_the_license_and_the_build_files(dists: tuple[Path, Path]) -> None:
    _, sdist = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        (license_name,) = [name for name in archive.getnames() if name.endswith("/LICENSE")]
        license_file = archive.extractfile(license_name)
        assert license_file is not None
        license_text = license_file.read()
    assert {"LICENSE", "README.md", "pyproject.toml", "mlsec/__init__.py"} <= names
    assert "tests/test_wheel.py" in names
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in license_text


def _fresh_environment(where: Path, wheel: Path) -> Path:
    """A venv without pip that borrows this environment's packages; the wheel installed into it."""
    _run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    python = where / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib], cwd=where.parent).strip())
    borrowed = [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages")]
    (site / "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python, "install"]
    # --ignore-installed: the borrowed site-packages may already hold mlsec-audit (a non-editable
    # install, as in CI); pip must still put the wheel into the fresh environment, and must not
    # touch the borrowed one.
    _run(
        [*pip, "--no-deps", "--no-index", "--ignore-installed", "--quiet", wheel], cwd=where.parent
    )
    return site


def test_the_installed_wheel_audits_from_outside_the_repository(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, _ = dists
    site = _fresh_environment(tmp_path / "fresh", wheel)
    work = tmp_path / "work"
    work.mkdir()
    assert not work.is_relative_to(ROOT)
    python, mlsec = tmp_path / "fresh/bin/python", tmp_path / "fresh/bin/mlsec"
    imported = Path(_run([python, "-c", "import mlsec; print(mlsec.__file__)"], cwd=work).strip())
    assert imported == site / "mlsec" / "__init__.py"
    assert str(python) in mlsec.read_text()[:500]  # the command runs the fresh interpreter
    _run([mlsec, "audit", "--limit", "50", "-q", "--json", "out.json"], cwd=work)
    for model in DEFAULT_MODELS:
        report = json.loads((work / f"out.{model}.json").read_text())
        assert report["model"] == model
        assert report["data"] == "mnist-sample"
        assert report["n"] == 50
        # the bundled weights loaded: an untrained network would score about 10%
        assert report["clean_accuracy"] >= 0.9
        assert 0.3 in {row["eps"] for row in report["worst_case"]}  # MNIST's customary budget
    assert sorted(path.name for path in work.glob("out.*.json")) == sorted(
        f"out.{model}.json" for model in DEFAULT_MODELS
    )
