"""A corpus of crafted model files: each is refused in one line (exit 2) and runs no code.

The files are built here from honest exports of the bundled CNN, each changed the way an attacker
would. Every payload creates a marker folder when it runs; the tests assert the marker is absent
after mlsec refused the file, and, where the payload is known to fire in PyTorch's own loader,
that it does fire when the user passes --trust-pickle (so the corpus is really hostile).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mlsec
from mlsec.cli import main
from mlsec.errors import InputError
from mlsec.io import load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

Change = Callable[[str, bytes], bytes]


class _MkdirOnLoad:
    """A pickle that runs ``os.mkdir(path)`` when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def _evil_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_MkdirOnLoad(marker), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled CNN exported with a dynamic batch, as torch.export.save writes it."""
    path = tmp_path_factory.mktemp("honest") / "cnn.pt2"
    model = mlsec.zoo.load("mnist-cnn")
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def _rewrite(
    source: Path, target: Path, change: Change, extra: dict[str, bytes] | None = None
) -> Path:
    """Copy the zip ``source`` to ``target`` through ``change(name, data)``, adding ``extra``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, change(info.filename, old.read(info.filename)))
        for name, data in (extra or {}).items():
            new.writestr(name, data)
    return target


def _json_change(entry: str, edit: Callable[[Any], None]) -> Change:
    def change(name: str, data: bytes) -> bytes:
        if name.endswith(entry):
            value = json.loads(data)
            edit(value)
            return json.dumps(value).encode()
        return data

    return change


def _keep(name: str, data: bytes) -> bytes:
    return data


def _audit(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    argv = ["audit", "--model", str(path), "--attacks", "fgsm", "--eps", "0.1"]
    code = main([*argv, "--limit", "8", "--no-checks", "-q", *extra])
    return code, capsys.readouterr().err


def _refused(path: Path, marker: Path, capsys: pytest.CaptureFixture[str], *parts: str) -> None:
    code, err = _audit(path, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("mlsec: --model: "), err
    for part in parts:
        assert part in err, err
    assert not marker.exists(), "the file's code ran"


# --- each crafted archive ------------------------------------------------------------------------


def _pickled_weight(honest: Path, marker: Path, target: Path) -> Path:
    def edit(config: Any) -> None:
        config["config"]["0.weight"]["use_pickle"] = True

    change = _json_change("data/weights/model_weights_config.json", edit)
    return _rewrite(
        honest,
        target,
        lambda n, d: _evil_pickle(marker) if n.endswith("weights/weight_0") else change(n, d),
    )


def _second_program(honest: Path, marker: Path, target: Path) -> Path:
    """A second program under models/ with a slash in its name, whose weights are a pickle."""
    top = zipfile.ZipFile(honest).namelist()[0].partition("/")[0]
    with zipfile.ZipFile(honest) as old:
        files = {name: old.read(name) for name in old.namelist()}
    extra: dict[str, bytes] = {}
    for name, data in files.items():
        inner = name.partition("/")[2]
        if inner == "models/model.json":
            extra[f"{top}/models/sub/evil.json"] = data
        elif inner == "data/sample_inputs/model.pt":
            extra[f"{top}/data/sample_inputs/sub/evil.pt"] = data
        elif inner == "data/constants/model_constants_config.json":
            extra[f"{top}/data/constants/sub/evil_constants_config.json"] = data
    extra[f"{top}/data/weights/sub/evil.pt"] = _evil_pickle(marker)  # the legacy weights file
    return _rewrite(honest, target, _keep, extra)


def _pickled_sample_inputs(honest: Path, marker: Path, target: Path) -> Path:
    evil = _evil_pickle(marker)
    return _rewrite(
        honest, target, lambda n, d: evil if n.endswith("sample_inputs/model.pt") else d
    )


def _constant_entry(path_name: str, payload: bytes) -> Callable[[Path, Path], Path]:
    """A builder adding a constant ``evil`` marked as pickled, stored as ``path_name``."""

    def build(honest: Path, target: Path) -> Path:
        def edit(config: Any) -> None:
            config["config"]["evil"] = {
                "path_name": path_name,
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }

        top = zipfile.ZipFile(honest).namelist()[0].partition("/")[0]
        change = _json_change("data/constants/model_constants_config.json", edit)
        return _rewrite(honest, target, change, {f"{top}/data/constants/{path_name}": payload})

    return build


def _opaque_object_constant(honest: Path, marker: Path, target: Path) -> Path:
    """An opaque object constant: PyTorch loads it with plain pickle.loads."""
    return _constant_entry("opaque_obj_0", pickle.dumps(_MkdirOnLoad(marker)))(honest, target)


def _pickled_constant(honest: Path, marker: Path, target: Path) -> Path:
    """A tensor constant marked as pickled: PyTorch loads it with weights_only=False."""
    return _constant_entry("tensor_9", _evil_pickle(marker))(honest, target)


def _guard_code(honest: Path, marker: Path, target: Path) -> Path:
    def edit(program: Any) -> None:
        program["guards_code"] = [f"__import__('os').mkdir({str(marker)!r}) is None"]

    return _rewrite(honest, target, _json_change("models/model.json", edit))


def _shape_expression(honest: Path, marker: Path, target: Path) -> Path:
    payload = f"__import__('os').mkdir({str(marker)!r}) or Symbol('s".encode()

    def change(name: str, data: bytes) -> bytes:
        return (
            data.replace(b"Symbol('s", payload, 1) if name.endswith("models/model.json") else data
        )

    return _rewrite(honest, target, change)


def _python_target(honest: Path, marker: Path, target: Path) -> Path:
    def edit(program: Any) -> None:
        node = program["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.mkdir"
        node["inputs"] = [{"name": "path", "arg": {"as_string": str(marker)}, "kind": 1}]

    return _rewrite(honest, target, _json_change("models/model.json", edit))


def _weight_name_injection(honest: Path, marker: Path, target: Path) -> Path:
    evil = f'0.weight") if __import__("os").mkdir({str(marker)!r}) else getattr(self, "0'

    def edit(program: Any) -> None:
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if spec.get("parameter", {}).get("parameter_name") == "0.weight":
                spec["parameter"]["parameter_name"] = evil

    return _rewrite(honest, target, _json_change("models/model.json", edit))


def _legacy_layout(honest: Path, marker: Path, target: Path) -> Path:
    """The pre-2.7 layout torch.export.load falls back to: top-level pickles."""
    evil = _evil_pickle(marker)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("version", "8.0")
        archive.writestr("serialized_exported_program.json", b"{}")
        archive.writestr("serialized_state_dict.pt", evil)
        archive.writestr("serialized_constants.pt", evil)
        archive.writestr("serialized_example_inputs.pt", evil)
    return target


def _fallback_beside_new_layout(honest: Path, marker: Path, target: Path) -> Path:
    """A new-layout archive that fails to load, with the old layout's pickles beside it."""
    evil = _evil_pickle(marker)
    extra = {
        "version": b"8.0",
        "serialized_exported_program.json": b"{}",
        "serialized_state_dict.pt": evil,
    }
    return _rewrite(
        honest, target, lambda n, d: b"0" if n.endswith("archive_version") else d, extra
    )


def _duplicate_entry(honest: Path, marker: Path, target: Path) -> Path:
    top = zipfile.ZipFile(honest).namelist()[0].partition("/")[0]
    with pytest.warns(UserWarning, match="Duplicate name"):
        return _rewrite(honest, target, _keep, {f"{top}/data/sample_inputs/model.pt": b"x"})


def _native_code(honest: Path, marker: Path, target: Path) -> Path:
    top = zipfile.ZipFile(honest).namelist()[0].partition("/")[0]
    return _rewrite(honest, target, _keep, {f"{top}/data/aotinductor/model/model.so": b"\x7fELF"})


CASES: dict[str, tuple[Callable[[Path, Path, Path], Path], str, bool]] = {
    # name: (builder, a part of the message, whether PyTorch's own loader runs the payload)
    "pickled-weight": (_pickled_weight, "holds a pickled weight (0.weight)", True),
    "second-program": (_second_program, "sub/evil", True),
    "pickled-sample-inputs": (_pickled_sample_inputs, "sample inputs that need unpickling", True),
    "opaque-object": (_opaque_object_constant, "data/constants/opaque_obj_0", True),
    "pickled-constant": (_pickled_constant, "holds a pickled constant (evil)", True),
    "guard-code": (_guard_code, "carries guard code", True),
    "shape-expression": (_shape_expression, "shape expression that is code", True),
    "python-target": (_python_target, "calls torch.os.mkdir", False),
    "weight-name": (_weight_name_injection, "names a weight", False),
    "legacy-layout": (_legacy_layout, "layout of PyTorch < 2.7", False),
    "fallback": (_fallback_beside_new_layout, "outside its top folder (version)", False),
    "duplicate-entry": (_duplicate_entry, "twice", False),
    "native-code": (_native_code, "data/aotinductor/model/model.so", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_export_is_refused_and_runs_nothing(
    case: str, honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, message, _ = CASES[case]
    marker = tmp_path / "code_ran"
    path = build(honest, marker, tmp_path / f"{case}.pt2")
    _refused(path, marker, capsys, message)


@pytest.mark.parametrize("case", sorted(c for c, (_, _, fires) in CASES.items() if fires))
def test_the_corpus_is_hostile_when_trusted(case: str, honest: Path, tmp_path: Path) -> None:
    """With --trust-pickle PyTorch's loader runs the payload: the refusals above are not idle."""
    build, _, _ = CASES[case]
    marker = tmp_path / "code_ran"
    path = build(honest, marker, tmp_path / f"{case}.pt2")
    with contextlib.suppress(InputError):  # a payload may break the program after it ran
        model, _, _ = load_model(str(path), trust_pickle=True)
        model(torch.rand(2, 1, 28, 28))  # guard code runs with the program
    assert marker.is_dir()


def test_honest_exports_still_load(honest: Path, tmp_path: Path) -> None:
    """A network with batch norm and a buffer, and the bundled CNN, load and compute the same."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(2704, 10)
            )
            self.scale: torch.Tensor
            self.register_buffer("scale", torch.tensor(2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.body(x * self.scale)
            return out

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "bn.pt2"
    program = torch.export.export(
        net, (torch.rand(3, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, path)
    x = torch.rand(5, 1, 28, 28)
    for file, reference in ((path, net), (honest, mlsec.zoo.load("mnist-cnn"))):
        model, _, notes = load_model(str(file))
        with torch.no_grad():
            assert torch.allclose(model(x), reference(x), atol=1e-5)
        assert not any("--trust-pickle" in note for note in notes)


def test_unknown_entries_in_torchscript_and_state_dict_zips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = mlsec.zoo.load("mnist-cnn")
    script, state = tmp_path / "cnn.ts", tmp_path / "state.pt"
    torch.jit.script(model).save(str(script))
    torch.save(model.state_dict(), state)
    marker = tmp_path / "code_ran"
    for source in (script, state):
        top = zipfile.ZipFile(source).namelist()[0].partition("/")[0]
        evil = _rewrite(
            source, tmp_path / f"evil_{source.name}", _keep, {f"{top}/extra.pkl": b"\x80\x04N."}
        )
        _refused(evil, marker, capsys, "holds an entry that no honest export has (extra.pkl)")


def test_pickled_state_dict_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "weights.pt"
    torch.save({"0.weight": _MkdirOnLoad(marker)}, path)
    code, err = _audit(path, capsys, "--arch", "mlsec.zoo.architectures:mnist_cnn")
    assert code == 2 and err.count("\n") == 1 and "--trust-pickle" in err, err
    assert not marker.exists()
