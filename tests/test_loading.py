"""Loading models and data from files: every format, and broken files of every format."""

from __future__ import annotations

import ast
import io
import json
import os
import textwrap
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import input_error
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import mlsec
from mlsec.core.data import as_tensors
from mlsec.core.model import frozen
from mlsec.errors import InputError
from mlsec.io import (
    CLASS_MAP_NOTE,
    PICKLE_WARNING,
    Terms,
    image_folder_classes,
    load_data,
    load_entry_point,
    load_model,
)

N = 64

# The bundled CNN is saved as TorchScript here, an API that PyTorch now marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


class _MkdirOnLoad:
    """A pickle that runs ``os.mkdir(path)`` when loaded: proof of whether code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def _truncate(source: Path, target: Path) -> Path:
    """Write the first half of ``source`` to ``target``."""
    blob = source.read_bytes()
    target.write_bytes(blob[: len(blob) // 2])
    return target


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mlsec.datasets.mnist_sample()
    return x[:N], y[:N]


@pytest.fixture(scope="module")
def reference(sample: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The bundled CNN's logits on the sample: what every loaded copy must reproduce."""
    with torch.no_grad():
        out: torch.Tensor = mlsec.zoo.load("mnist-cnn")(sample[0])
    return out


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, sample: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Path]:
    """The bundled CNN saved in every format, once for the module."""
    root = tmp_path_factory.mktemp("models")
    model = mlsec.zoo.load("mnist-cnn")
    x = sample[0]
    paths = {
        "torchscript": root / "cnn_script.pt",
        "export": root / "cnn.pt2",
        "export-static": root / "cnn_static.pt2",
        "safetensors": root / "cnn.safetensors",
        "state-dict": root / "cnn_state.pt",
        "checkpoint": root / "cnn_checkpoint.pth",
        "pickle": root / "cnn_whole.pt",
    }
    torch.jit.script(model).save(str(paths["torchscript"]))
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)), paths["export"]
    )
    torch.export.save(torch.export.export(model, (x[:5],)), paths["export-static"])
    state = model.state_dict()
    save_file(state, str(paths["safetensors"]))
    torch.save(state, paths["state-dict"])
    torch.save({"state_dict": state, "epoch": 3, "lr": 0.1}, paths["checkpoint"])
    torch.save(model, paths["pickle"])
    return paths


@pytest.fixture
def arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module with network factories, importable from the cwd; returns its name."""
    name = f"archmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from mlsec.zoo import architectures

            def cnn():
                return architectures.mnist_cnn()

            def softmax():
                return architectures.mnist_softmax()

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return name


# --- models: every format loads the same network -------------------------------------------------

FORMATS = ["torchscript", "export", "export-static", "safetensors", "state-dict", "checkpoint"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_model_format_gives_the_original_logits(
    kind: str,
    files: dict[str, Path],
    arch: str,
    sample: tuple[torch.Tensor, torch.Tensor],
    reference: torch.Tensor,
) -> None:
    model, name, notes = load_model(str(files[kind]), arch=f"{arch}:cnn")
    assert name == files[kind].name
    assert not model.training
    assert PICKLE_WARNING not in notes
    with torch.no_grad():
        out = model(sample[0])
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    weights_only = kind in ("safetensors", "state-dict", "checkpoint")
    assert any(f"into arch {arch}:cnn" in note for note in notes) == weights_only
    assert any("was not used" in note for note in notes) == (not weights_only)


def test_checkpoint_note_names_the_entry(files: dict[str, Path], arch: str) -> None:
    _, _, notes = load_model(str(files["checkpoint"]), arch=f"{arch}:cnn")
    assert any("'state_dict' entry" in note for note in notes)


def test_exported_program_with_a_fixed_batch_runs_any_batch(
    files: dict[str, Path], sample: tuple[torch.Tensor, torch.Tensor], reference: torch.Tensor
) -> None:
    model, _, notes = load_model(str(files["export-static"]))
    assert any("batches of exactly 5" in note for note in notes)
    x = sample[0]
    with torch.no_grad():
        for count in (1, 5, 7, 63):  # fewer, equal, a partial last chunk, many chunks
            torch.testing.assert_close(model(x[:count]), reference[:count], atol=1e-5, rtol=0)


def test_exported_program_switches_mode_and_gives_input_gradients(
    files: dict[str, Path], sample: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model, _, _ = load_model(str(files["export"]))
    assert not any(m.training for m in model.modules()), "a loaded program is in eval mode"
    model.train()
    assert model.training
    with frozen(model):
        assert not model.training
    assert model.training
    model.eval()
    original = mlsec.zoo.load("mnist-cnn")
    x = sample[0][:8]
    grads = []
    for net in (model, original):
        x_ = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(net(x_), sample[1][:8])
        grads.append(torch.autograd.grad(loss, x_)[0])
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_model_data_parallel_prefix_is_removed(
    tmp_path: Path, arch: str, sample: tuple[torch.Tensor, torch.Tensor], reference: torch.Tensor
) -> None:
    state = {f"module.{k}": v for k, v in mlsec.zoo.load("mnist-cnn").state_dict().items()}
    path = tmp_path / "parallel.pt"
    torch.save(state, path)
    model, _, notes = load_model(str(path), arch=f"{arch}:cnn")
    assert any("'module.' prefix" in note for note in notes)
    with torch.no_grad():
        torch.testing.assert_close(model(sample[0]), reference, atol=1e-5, rtol=0)


def test_bundled_and_entry_point_models_still_load(arch: str) -> None:
    model, name, notes = load_model("mnist-cnn")
    assert (name, notes, model.training) == ("mnist-cnn", [], False)
    model, name, notes = load_model(f"{arch}:cnn")
    # The user's model keeps its mode: the audit evaluates in eval mode and warns about it.
    assert name == f"{arch}:cnn"
    assert model.training
    assert notes == []


# --- models: pickles ----------------------------------------------------------------------------


def test_pickled_model_is_refused_without_trust_pickle(files: dict[str, Path]) -> None:
    input_error(
        lambda: load_model(str(files["pickle"])),
        "cnn_whole.pt is a pickled Python object",
        "torch.nn.modules.container.Sequential",
        "pass trust_pickle=True only if",
        "run code",
    )


def test_pickled_model_loads_with_trust_pickle_and_a_warning(
    files: dict[str, Path], sample: tuple[torch.Tensor, torch.Tensor], reference: torch.Tensor
) -> None:
    model, name, notes = load_model(str(files["pickle"]), trust_pickle=True)
    assert name == "cnn_whole.pt" and not model.training
    assert notes == [PICKLE_WARNING]
    assert PICKLE_WARNING == (
        "loaded a pickled model with --trust-pickle: this executed code from the file"
    )
    with torch.no_grad():
        torch.testing.assert_close(model(sample[0]), reference, atol=1e-5, rtol=0)


def test_refused_pickle_runs_no_code_and_a_trusted_one_does(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save(_MkdirOnLoad(marker), path)
    input_error(lambda: load_model(str(path)), "posix.mkdir", "trust_pickle=True")
    assert not marker.exists()
    # Trusted, the file's code runs (and gives no model).
    input_error(lambda: load_model(str(path), trust_pickle=True), "holds a NoneType")
    assert marker.is_dir()


def _rewrite_zip(source: Path, target: Path, change: Callable[[str, bytes], bytes]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, change(info.filename, old.read(info.filename)))
    return target


def _evil_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_MkdirOnLoad(marker), buffer)
    return buffer.getvalue()


def test_exported_program_with_pickled_weights_is_refused_unread(
    files: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "code_ran"

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                if entry["path_name"] == "weight_1":
                    entry["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_1"):
            return _evil_pickle(marker)
        return data

    path = _rewrite_zip(files["export"], tmp_path / "evil.pt2", change)
    input_error(lambda: load_model(str(path)), "holds a pickled weight", "trust_pickle=True")
    assert not marker.exists()


def test_exported_program_with_pickled_sample_inputs_is_refused_unread(
    files: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "code_ran"

    def change(name: str, data: bytes) -> bytes:
        return _evil_pickle(marker) if name.endswith("data/sample_inputs/model.pt") else data

    path = _rewrite_zip(files["export"], tmp_path / "evil.pt2", change)
    input_error(lambda: load_model(str(path)), "sample inputs that need unpickling")
    assert not marker.exists()


# --- models: broken files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reading_as"),
    [
        ("torchscript", "cnn_script_half.pt as a PyTorch file: it starts like a zip archive"),
        ("export", "cnn_half.pt2 as a torch.export program: it starts like a zip archive"),
        ("safetensors", "cnn_half.safetensors as safetensors: Error while deserializing header"),
        ("state-dict", "cnn_state_half.pt as a PyTorch file: it starts like a zip archive"),
        ("pickle", "cnn_whole_half.pt as a PyTorch file: it starts like a zip archive"),
    ],
)
def test_truncated_model_files(
    kind: str, reading_as: str, files: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    source = files[kind]
    half = _truncate(source, tmp_path / f"{source.stem}_half{source.suffix}")
    input_error(
        lambda: load_model(str(half), arch=f"{arch}:cnn", trust_pickle=True),
        f"model: cannot read {half.parent}/{reading_as}",
    )


def test_weights_of_another_network(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "softmax.safetensors"
    save_file(mlsec.zoo.load("mnist-softmax").state_dict(), str(path))
    input_error(
        lambda: load_model(str(path), arch=f"{arch}:cnn"),
        f"model: the weights in {path} do not fit arch {arch}:cnn",
        "keys 8 missing (0.bias, 0.weight, 3.bias, ...); 2 unexpected (1.bias, 1.weight)",
    )


def test_weights_of_the_wrong_shape(tmp_path: Path, arch: str) -> None:
    state = mlsec.zoo.load("mnist-cnn").state_dict()
    state["9.weight"] = torch.zeros(5, 100)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    input_error(
        lambda: load_model(str(path), arch=f"{arch}:cnn"),
        "9.weight has shape (5, 100) in the file but (10, 100) in the network",
    )


@pytest.mark.parametrize("kind", ["safetensors", "state-dict"])
def test_weights_without_arch(kind: str, files: dict[str, Path]) -> None:
    input_error(
        lambda: load_model(str(files[kind])), "holds weights only", "give arch module:factory"
    )


def test_arch_that_is_not_a_network(files: dict[str, Path], arch: str) -> None:
    input_error(
        lambda: load_model(str(files["safetensors"]), arch=f"{arch}:not_a_module"),
        f"arch: {arch}:not_a_module must return a torch.nn.Module (got int)",
    )


def test_missing_empty_and_folder_model_paths(tmp_path: Path) -> None:
    input_error(lambda: load_model(str(tmp_path / "none.pt")), "no such file", "none.pt")
    input_error(lambda: load_model("weights.safetensors"), "no such file: weights.safetensors")
    input_error(lambda: load_model(str(tmp_path)), "is a folder")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    input_error(lambda: load_model(str(empty)), "empty.pt is empty")
    input_error(lambda: load_model("mnist-cnnx"), "unknown model 'mnist-cnnx'")


def test_dict_that_is_no_state_dict(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    input_error(lambda: load_model(str(path), arch=f"{arch}:cnn"), "holds a dict (epochs, lr)")


def test_file_name_with_control_characters_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname\x1b[31m.pt"
    path.write_bytes(b"not a model")
    message = input_error(
        lambda: load_model(str(path)),
        "model: cannot read '",
        "bad\\nname\\x1b[31m.pt' as a PyTorch file: Unsupported operand 110",
    )
    assert "\x1b" not in message


# --- data: .npz files ---------------------------------------------------------------------------


def _read_all(
    spec: str, **options: Any
) -> tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]:
    """``load_data``, its samples read whole: an error found while reading counts too."""
    samples, name, notes = load_data(spec, **options)
    return samples.tensors(), name, notes


def _uint8(x: torch.Tensor) -> np.ndarray:
    """The bundled images back as the uint8 array they were stored as."""
    return (x * 255).round().to(torch.uint8).numpy()


def test_npz_uint8_nhwc(tmp_path: Path, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = sample
    path = tmp_path / "digits.npz"
    np.savez(path, x=_uint8(x).transpose(0, 2, 3, 1), y=y.numpy().astype(np.uint8))
    (xl, yl), name, notes = _read_all(str(path))
    assert name == "digits.npz"
    assert xl.dtype == torch.float32 and yl.dtype == torch.int64
    assert torch.equal(xl, x) and torch.equal(yl, y)
    assert "x is uint8: divided by 255 to [0, 1]" in notes
    assert "x has shape (64, 28, 28, 1): assumed NHWC [N,H,W,C], transposed to NCHW" in notes


def test_npz_float_nchw(tmp_path: Path, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = sample
    path = tmp_path / "digits.npz"
    np.savez_compressed(path, x=x.numpy().astype(np.float64), y=y.numpy())
    (xl, yl), _, notes = _read_all(str(path))
    assert xl.dtype == torch.float32
    assert torch.equal(xl, x) and torch.equal(yl, y)
    assert "x has shape (64, 1, 28, 28): assumed NCHW [N,C,H,W]" in notes
    assert "x is float64: used as it is; it spans [0, 1]" in notes


def test_npz_three_dimensional(tmp_path: Path, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = sample
    path = tmp_path / "digits.npz"
    np.savez(path, x=_uint8(x)[:, 0], y=y.numpy())
    (xl, yl), _, notes = _read_all(str(path))
    assert torch.equal(xl, x) and torch.equal(yl, y)
    assert any("[N,1,H,W]" in note for note in notes)


def test_npz_rgb_nhwc_is_transposed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(path, x=images, y=np.arange(6))
    (xl, _), _, _ = _read_all(str(path))
    assert xl.shape == (6, 3, 5, 7)
    assert torch.equal(xl, torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255))


BROKEN_NPZ: dict[str, tuple[dict[str, Any], str]] = {
    "x 2-D": (
        {"x": np.zeros((4, 784), np.float32), "y": np.zeros(4, np.int64)},
        "x must hold images [N,H,W], [N,C,H,W] or [N,H,W,C] (got shape (4, 784))",
    ),
    "lengths differ": (
        {"x": np.zeros((4, 1, 28, 28), np.float32), "y": np.zeros(3, np.int64)},
        "need inputs [n, ...] and labels [n] (got (4, 1, 28, 28) and (3,)): 4 inputs but 3 labels",
    ),
    "NaN pixels": (
        {
            "x": np.where(np.arange(5)[:, None, None, None] == 3, np.nan, 0.5)
            * np.ones((5, 1, 28, 28), np.float32),
            "y": np.zeros(5, np.int64),
        },
        "inputs contain NaN or infinite values (first at sample 3)",
    ),
    "infinite pixels": (
        {
            "x": np.concatenate([np.zeros((2, 1, 4, 4)), np.full((1, 1, 4, 4), np.inf)]),
            "y": np.zeros(3, np.int64),
        },
        "inputs contain NaN or infinite values (first at sample 2)",
    ),
    "empty": (
        {"x": np.zeros((0, 1, 28, 28), np.uint8), "y": np.zeros(0, np.int64)},
        "the data set is empty",
    ),
    "missing y": (
        {"x": np.zeros((4, 1, 28, 28), np.uint8), "labels": np.zeros(4, np.int64)},
        "no array 'y' (found labels, x)",
    ),
    "object array": (
        {"x": np.array([np.zeros((28, 28)), "seven"], dtype=object), "y": np.zeros(2, np.int64)},
        "array 'x' holds Python objects, which mlsec does not unpickle",
    ),
    "float labels": (
        {"x": np.zeros((4, 1, 28, 28), np.uint8), "y": np.zeros(4, np.float32)},
        "labels y must be integers (got float32)",
    ),
    "int64 pixels": (
        {"x": np.zeros((4, 1, 28, 28), np.int64), "y": np.zeros(4, np.int64)},
        "x must be uint8 (0-255) or floating point (got int64)",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_NPZ))
def test_broken_npz(case: str, tmp_path: Path) -> None:
    arrays, message = BROKEN_NPZ[case]
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    input_error(lambda: _read_all(str(path)), f"data: {path}: {message}")


def test_truncated_npz_and_other_files(
    tmp_path: Path, sample: tuple[torch.Tensor, torch.Tensor]
) -> None:
    full = tmp_path / "full.npz"
    np.savez(full, x=_uint8(sample[0]), y=sample[1].numpy())
    half = _truncate(full, tmp_path / "half.npz")
    input_error(lambda: _read_all(str(half)), "cannot read it as an .npz archive")
    single = tmp_path / "single.npy"
    np.save(single, _uint8(sample[0]))
    input_error(lambda: _read_all(str(single)), "holds a single array")
    pickled = tmp_path / "pickled.npz"
    with pickled.open("wb") as fh:
        torch.save((sample[0], sample[1]), fh)
    input_error(lambda: _read_all(str(pickled)), "no array 'x' or 'y' (found archive/")
    input_error(lambda: _read_all(str(tmp_path / "none.npz")), "no such file or folder")
    text = tmp_path / "digits.csv"
    text.write_text("0,0,0\n")
    input_error(lambda: _read_all(str(text)), f"data: {text}: not an .npz archive")
    input_error(lambda: _read_all("/dev/null"), "data: /dev/null is not a regular file")
    input_error(lambda: load_model("/dev/null"), "model: /dev/null is not a regular file")


# --- data: image folders ------------------------------------------------------------------------


def _write_digits(root: Path, x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> None:
    """PNG files of the bundled digits of ``classes``, in one subfolder per class."""
    pixels = _uint8(x)[:, 0]
    for label in classes:
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i in np.flatnonzero(y.numpy() == label):
            Image.fromarray(pixels[i], mode="L").save(folder / f"{i:03d}.png")


def test_image_folder_of_digits(tmp_path: Path, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = sample
    classes = [0, 1, 7]
    _write_digits(tmp_path / "digits", x, y, classes)
    (xl, yl), name, notes = _read_all(str(tmp_path / "digits"))
    # Sorted by class folder, then by file name: the sample's own order within each class.
    order = torch.cat([torch.nonzero(y == c)[:, 0] for c in classes])
    assert name == "digits"
    assert xl.shape == (len(order), 1, 28, 28) and xl.dtype == torch.float32
    assert torch.equal(xl, x[order])
    assert torch.equal(yl, y[order])  # numbered class folders: the number is the label
    assert notes[0] == (
        f"read {len(order)} images in 3 classes from image folder {tmp_path / 'digits'}: "
        "1-channel 28x28, pixels divided by 255 to [0, 1]"
    )
    assert notes[1] == (
        "class labels from the folder names: 0=0, 1=1, 7=7 (label=folder, by the folder numbers)"
    )


def test_image_folder_in_colour(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(3, 6, 9, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(6, 9), dtype=np.uint8)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    Image.fromarray(rgb[0], mode="RGB").save(tmp_path / "cat" / "a.png")
    Image.fromarray(rgb[1], mode="RGB").save(tmp_path / "cat" / "b.bmp")
    Image.fromarray(np.dstack([rgb[2], gray]), mode="RGBA").save(tmp_path / "dog" / "c.png")
    Image.fromarray(gray, mode="L").save(tmp_path / "dog" / "d.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (xl, yl), _, notes = _read_all(str(tmp_path))
    expected = np.stack([rgb[0], rgb[1], rgb[2], np.dstack([gray] * 3)]).transpose(0, 3, 1, 2)
    assert torch.equal(xl, torch.from_numpy(expected.astype(np.float32) / 255))
    assert yl.tolist() == [0, 0, 1, 1]
    assert (
        "class labels from the folder names: 0=cat, 1=dog (label=folder, by sorted names)" in notes
    )
    assert "dropped the alpha channel of 1 images" in notes


@pytest.mark.parametrize(
    ("names", "labels", "note"),
    [
        # Numbers are labels, in numeric order: "10" is class 10, not class 1 by string order.
        (["1", "2", "10"], [1, 2, 10], "class labels from the folder names: 1=1, 2=2, 10=10"),
        (["007", "3"], [3, 7], "class labels from the folder names: 3=3, 7=007"),
        (["2", "0", "1"], [0, 1, 2], "class labels are the folder numbers: 0=0, 1=1, 2=2"),
        # One name that is not a number: the labels follow the sorted names.
        (["1", "10", "x"], [0, 1, 2], "class labels from the folder names: 0=1, 1=10, 2=x"),
        (["dog", "cat"], [0, 1], "class labels from the folder names: 0=cat, 1=dog"),
    ],
)
def test_image_folder_with_numbered_classes_uses_the_numbers(
    names: list[str], labels: list[int], note: str, tmp_path: Path
) -> None:
    for name in names:
        (tmp_path / name).mkdir()
        Image.new("L", (4, 4)).save(tmp_path / name / "a.png")
    (_, yl), _, notes = _read_all(str(tmp_path))
    assert yl.tolist() == labels
    assert notes[1].startswith(note)
    assert notes[1].startswith(CLASS_MAP_NOTE) == (names != ["2", "0", "1"])
    assert list(image_folder_classes(tmp_path).values()) == labels


def test_image_folder_with_one_number_twice_is_refused(tmp_path: Path) -> None:
    for name in ("7", "07", "1"):
        (tmp_path / name).mkdir()
        Image.new("L", (4, 4)).save(tmp_path / name / "a.png")
    input_error(
        lambda: _read_all(str(tmp_path)),
        "class folders 07 and 7 are both class 7; merge them or rename one",
    )


def test_broken_image_folders(tmp_path: Path, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    input_error(lambda: _read_all(str(empty)), "needs one subfolder per class; it is empty")

    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("L", (4, 4)).save(loose / "a.png")
    input_error(lambda: _read_all(str(loose)), "it has 1 images but no subfolders")

    no_images = tmp_path / "no_images"
    (no_images / "cat").mkdir(parents=True)
    (no_images / "dog").mkdir()
    Image.new("L", (4, 4)).save(no_images / "cat" / "a.png")
    input_error(lambda: _read_all(str(no_images)), "class folder dog holds no images")

    sizes = tmp_path / "sizes"
    _write_digits(sizes, sample[0][:10], sample[1][:10], [int(sample[1][0])])
    Image.new("L", (32, 30)).save(sizes / str(int(sample[1][0])) / "999.png")
    input_error(
        lambda: _read_all(str(sizes)),
        f"images differ in size: {sample[1][0]}/999.png is 32x30 but",
        "is 28x28",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("truncated", "cannot read image 3/b.png: image file is truncated"),
        ("text", "cannot read image 3/b.png: cannot identify image file"),
        # Pillow would hand PostScript to Ghostscript; mlsec reads raster formats only.
        ("postscript", "cannot read image 3/b.png: cannot identify image file"),
        ("16-bit", "image 3/b.png has mode I;16"),
    ],
)
def test_unreadable_images(content: str, message: str, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "3"
    folder.mkdir(parents=True)
    Image.new("L", (28, 28), 7).save(folder / "a.png")
    bad = folder / "b.png"
    if content == "truncated":
        Image.fromarray(np.arange(784, dtype=np.uint8).reshape(28, 28)).save(folder / "full.png")
        _truncate(folder / "full.png", bad)
        (folder / "full.png").unlink()
    elif content == "text":
        bad.write_text("hello")
    elif content == "postscript":
        bad.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n")
    else:
        Image.fromarray(np.full((28, 28), 1000, np.uint16)).save(bad)
    input_error(lambda: _read_all(str(tmp_path / "data")), message)


# --- as_tensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.zeros(3, 1, 2, 2), torch.zeros(4, dtype=torch.long), "3 inputs but 4 labels"),
        (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), "the data set is empty"),
        (
            torch.tensor([[0.0, 1.0], [0.5, float("nan")]]),
            torch.zeros(2, dtype=torch.long),
            "inputs contain NaN or infinite values (first at sample 1)",
        ),
        (
            torch.full((2, 3), -float("inf")),
            torch.zeros(2, dtype=torch.long),
            "inputs contain NaN or infinite values (first at sample 0)",
        ),
    ],
)
def test_as_tensors_rejects(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    input_error(lambda: as_tensors((x, y), "--data"), "--data: ", message)


def test_as_tensors_keeps_good_data(sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = as_tensors((sample[0], sample[1].int()), "--data")
    assert x is sample[0] and y.dtype == torch.int64 and torch.equal(y, sample[1])


def test_as_tensors_reports_bad_items_without_wrapping() -> None:
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 3), torch.zeros(0))
    input_error(lambda: as_tensors(empty, "--data"), "--data: the data set is empty")
    input_error(
        lambda: as_tensors(torch.utils.data.TensorDataset(torch.zeros(2, 3)), "--data"),
        "--data: each item must be an (input, label) pair",
    )


# --- messages: the library's terms, or the caller's ---------------------------------------------

CLI_TERMS = Terms(arch="--arch", trust_pickle="--trust-pickle", defense="--defense")


def test_errors_name_the_input_as_their_subject(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_model(str(files["pickle"]))
    assert info.value.subject == "model"
    assert str(info.value) == f"model: {info.value.detail}"
    assert info.value.detail.startswith(f"{files['pickle']} is a pickled Python object")
    with pytest.raises(InputError) as info:
        load_data(str(tmp_path / "none.npz"), subject="val")
    assert info.value.subject == "val" and str(info.value).startswith("val: no such file")
    with pytest.raises(InputError) as info:
        load_model(str(files["safetensors"]), arch="no_such_module_xyz:f")
    assert info.value.subject == "arch"
    assert info.value.detail == (
        "cannot import module 'no_such_module_xyz' "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz')"
    )


@pytest.mark.parametrize("cli", [False, True])
def test_messages_name_other_inputs_in_the_callers_terms(
    cli: bool, files: dict[str, Path], arch: str
) -> None:
    """A Python caller reads ``trust_pickle=True``; the command line passes its own flags."""
    terms = CLI_TERMS if cli else Terms()
    trust, arch_term, defense_term = (
        ("--trust-pickle", "--arch", "--defense")
        if cli
        else ("trust_pickle=True", "arch", "defense")
    )
    refused = input_error(
        lambda: load_model(str(files["pickle"]), terms=terms), f"pass {trust} only if"
    )
    weights = input_error(
        lambda: load_model(str(files["state-dict"]), terms=terms), f"give {arch_term} module:"
    )
    assert ("--" in refused + weights) == cli
    _, _, notes = load_model(str(files["safetensors"]), arch=f"{arch}:cnn", terms=terms)
    assert any(f"into {arch_term} {arch}:cnn" in note for note in notes), notes
    defense = input_error(lambda: load_model("mnist-defense-gan", terms=terms), "bundled defense")
    assert defense.endswith(f"audit a model behind it with {defense_term} mnist-defense-gan")


def test_entry_points_name_their_subject(arch: str) -> None:
    assert isinstance(load_entry_point(f"{arch}:cnn", "arch"), nn.Module)
    input_error(lambda: load_entry_point("no_colon", "arch"), "arch: must look like module:")
    input_error(
        lambda: load_entry_point(f"{arch}:missing"),
        f"entry point: module '{arch}' has no attribute 'missing'",
    )


def _code_texts(tree: ast.Module) -> list[str]:
    """Every string literal of a module's code: docstrings and ``PICKLE_WARNING`` aside."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PICKLE_WARNING":
            skip.add(id(node.value))  # the note, kept as the command line prints it
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    ]


def test_io_messages_name_no_command_line_flag() -> None:
    """Flags come from the caller (``Terms``), never from io's own text."""
    folder = Path(mlsec.__file__).parent / "io"
    checked = 0
    for module in sorted(folder.glob("*.py")):
        texts = _code_texts(ast.parse(module.read_text()))
        checked += len(texts)
        assert not [text for text in texts if "--" in text], module.name
    assert checked > 100  # the walk found the messages
