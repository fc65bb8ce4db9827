"""docs/walkthrough-cifar10.md runs as written: its Python blocks and its `mlsec audit` commands.

The page's own code builds the files: its factory module, its weights export (from a random-weights
ResNet-18 saved with ``torch.save``) and its image-folder writer (20 random 32x32 PNGs). Each
image's folder is the class the random network predicts for it, so every image starts correctly
classified and the attacks have work to do. The page's commands then run in-process with
``--limit 8`` and the ``quick`` suite.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlsec.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "walkthrough-cifar10.md"
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def _blocks(language: str) -> list[str]:
    """The page's fenced blocks in ``language``, in order."""
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _python_block(name: str) -> str:
    """The Python block whose first line is ``# name``."""
    found = [b for b in _blocks("python") if b.startswith(f"# {name}\n")]
    assert len(found) == 1, f"the page needs one python block starting '# {name}'"
    return found[0]


def _commands() -> list[list[str]]:
    """The page's ``mlsec audit`` commands, shrunk to the test's size: 8 images, ``quick``."""
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            if not line.startswith("mlsec audit"):
                continue
            argv = shlex.split(line)[1:]
            for option, small in (("--limit", "8"), ("--suite", "quick")):
                argv[argv.index(option) + 1] = small
            commands.append(argv)
    return commands


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the page's factory module, weights file and image folder."""
    root = tmp_path_factory.mktemp("walkthrough")
    (root / "cifar_models.py").write_text(_python_block("cifar_models.py"), encoding="utf-8")
    sys.path.insert(0, str(root))
    try:
        namespace: dict[str, object] = {}
        exec(_python_block("cifar_models.py"), namespace)
        factory = namespace["resnet18_cifar10"]
        assert callable(factory)
        torch.manual_seed(0)
        model = factory().eval()
        torch.save(model.state_dict(), root / "resnet18_cifar10.pt")
        _run_in(root, _python_block("export_weights.py"))
        images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            labels = model((x - MEAN) / STD).argmax(1).tolist()
        writer: dict[str, object] = {}
        exec(_python_block("write_folder.py"), writer)
        write = writer["write_image_folder"]
        assert callable(write)
        _run_in(root, "", call=lambda: write(images, labels, "cifar10-test"))
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("cifar_models", None)
    return root


def _run_in(folder: Path, code: str, call: object = None) -> None:
    """Run ``code`` (or ``call``) with ``folder`` as the working directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        if code:
            exec(code, {"__name__": "__main__"})
        if callable(call):
            call()


def test_page_builds_the_files(project: Path) -> None:
    assert (project / "resnet18_cifar10.safetensors").stat().st_size > 40_000_000  # 11.7M floats
    pngs = sorted((project / "cifar10-test").glob("*/*.png"))
    assert len(pngs) == 20
    assert all(p.parent.name.isdigit() and 0 <= int(p.parent.name) <= 9 for p in pngs)


def test_page_has_the_commands_it_promises() -> None:
    commands = _commands()
    assert len(commands) == 4
    for argv in commands:
        assert argv[argv.index("--eps") + 1] in ("8/255", "0.5")
        assert argv[argv.index("--normalize") + 1] == "0.4914,0.4822,0.4465,0.2470,0.2435,0.2616"


@pytest.mark.parametrize("number", range(4))
def test_page_command_runs(
    project: Path, number: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv = _commands()[number]
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path / "report")
    else:
        argv += ["--out", str(tmp_path / "report")]
    monkeypatch.chdir(project)
    code = main([*argv, "--quiet", "--device", "cpu"])
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["n"] == 8
    # Every image sits in the folder of the class the network predicts: all start correct.
    assert report["clean_accuracy"] == 1.0
    l2 = "l2" in argv
    assert report["norm"] == ("l2" if l2 else "linf")
    (worst,) = report["worst_case"]
    assert math.isclose(worst["eps"], 0.5 if l2 else 8 / 255)
    assert 0.0 <= worst["robust_accuracy"] <= 1.0
    assert report["config"]["suite"]["name"] == "quick"
    for name in ("report.md", "report.html", "report.junit.xml", "suite.toml"):
        assert (tmp_path / "report" / name).is_file()
    gate = [t for t in report["thresholds"] if t["spec"] == "worst@8/255=0.40"]
    assert len(gate) == ("--fail-under" in argv)
    holds = worst["robust_accuracy"] >= 0.40 and not (report["warnings"] and "--strict" in argv)
    assert code == (0 if not gate or holds else 1)
