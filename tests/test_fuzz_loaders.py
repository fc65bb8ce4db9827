"""Property tests over the loaders: any file gives a valid result or a one-line InputError.

Random ``.npz`` contents, image folders and damaged model archives are thrown at ``load_data``
and ``load_model``; no input may end in another exception (a traceback and exit 3 in the CLI), in
a result that breaks the documented types, or in a message of more than one line.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import mlsec
from mlsec.errors import InputError
from mlsec.io import load_data, load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
ARCH = "mlsec.zoo.architectures:mnist_cnn"


def _outcome(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None when it raised a one-line InputError."""
    try:
        return call()
    except InputError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        assert message.isprintable(), repr(message)
        return None


def _read(spec: str) -> tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]:
    """``load_data`` and every sample read: an error found only while reading counts too."""
    samples, name, notes = load_data(spec)
    x, y = samples.tensors()
    assert len(samples) == x.shape[0]
    return (x, y), name, notes


def _check_data(result: Any) -> None:
    if result is None:
        return
    (x, y), name, notes = result
    assert x.dtype == torch.float32 and x.dim() >= 2 and bool(torch.isfinite(x).all())
    assert y.dtype == torch.int64 and y.shape == (x.shape[0],) and x.shape[0] > 0
    assert isinstance(name, str) and all(isinstance(note, str) for note in notes)


DTYPES = st.sampled_from(
    [
        "uint8",
        "int8",
        "int16",
        "int64",
        "uint16",
        "float16",
        "float32",
        "float64",
        "bool",
        "complex64",
        "U3",
        "S2",
        "datetime64[s]",
    ]
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype, shape))


@FUZZ
@given(
    x=st.one_of(st.none(), arrays()),
    y=st.one_of(st.none(), arrays()),
    extra=st.dictionaries(st.sampled_from(["z", "x_", "labels"]), arrays(), max_size=2),
)
def test_any_npz_contents(x: np.ndarray | None, y: np.ndarray | None, extra: dict) -> None:
    arrays_ = {
        **extra,
        **({"x": x} if x is not None else {}),
        **({"y": y} if y is not None else {}),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npz"
        np.savez(path, **arrays_)
        result = _outcome(lambda: _read(str(path)))
        _check_data(result)
        if result is not None:  # read lazily, the values are numpy's own, in some layout
            (xl, _), _, _ = result
            eager = np.load(path, allow_pickle=False)["x"]
            scale = 255 if eager.dtype == np.uint8 else 1
            expected = np.sort(eager.astype(np.float32).ravel() / np.float32(scale))
            assert np.array_equal(np.sort(xl.numpy().ravel()), expected)


@FUZZ
@given(
    head=st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY", b"PK\x05\x06"]),
    body=st.binary(max_size=300),
    cut=st.integers(min_value=0, max_value=400),
)
def test_any_bytes_as_npz(head: bytes, body: bytes, cut: int) -> None:
    """Random files, and an honest .npz cut short or with bytes overwritten."""
    x, y = mlsec.datasets.mnist_sample()
    honest = io.BytesIO()
    np.savez(honest, x=x[:4].numpy(), y=y[:4].numpy())
    damaged = bytearray(honest.getvalue())
    damaged[cut : cut + len(body)] = body
    with tempfile.TemporaryDirectory() as folder:
        for blob in (head + body, bytes(damaged), honest.getvalue()[:cut]):
            path = Path(folder) / "data.npz"
            path.write_bytes(blob)
            _check_data(_outcome(partial(_read, str(path))))


@st.composite
def images(draw: st.DrawFn) -> tuple[str, bytes]:
    """An image file's name and bytes: any mode, size and format, sometimes damaged."""
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "I", "F", "LA"]))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    fmt = draw(st.sampled_from(["PNG", "BMP", "GIF", "TIFF", "JPEG"]))
    image = Image.new(mode, size, color=draw(st.integers(0, 255)) if mode != "F" else 0.5)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # Pillow cannot write this mode in this format
        image.convert("L").save(buffer, format=fmt)
    blob = buffer.getvalue()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(blob)))
        blob = blob[:cut] + draw(st.binary(max_size=8))
    suffix = draw(st.sampled_from([fmt.lower(), "png", "jpg", "txt"]))
    return f"img.{suffix}", blob


@FUZZ
@given(
    classes=st.dictionaries(
        st.text(alphabet="0123abc._ ", min_size=1, max_size=4),
        st.lists(images(), max_size=3),
        max_size=4,
    ),
    loose=st.lists(images(), max_size=2),
)
def test_any_image_folder(classes: dict[str, list[tuple[str, bytes]]], loose: list) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        root.mkdir()
        for index, (name, blob) in enumerate(loose):
            (root / f"{index}_{name}").write_bytes(blob)
        for label, files in classes.items():
            if label in (".", ".."):
                continue
            (root / label).mkdir(exist_ok=True)
            for index, (name, blob) in enumerate(files):
                (root / label / f"{index}_{name}").write_bytes(blob)
        _check_data(_outcome(lambda: _read(str(root))))


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bundled CNN as an export, TorchScript and a state dict: honest bytes to damage."""
    root = tmp_path_factory.mktemp("archives")
    model = mlsec.zoo.load("mnist-cnn")
    batch = torch.export.Dim("batch")
    example = (torch.rand(2, 1, 28, 28),)
    torch.export.save(
        torch.export.export(model, example, dynamic_shapes=({0: batch},)), root / "m.pt2"
    )
    torch.jit.script(model).save(str(root / "m.ts"))
    torch.save(model.state_dict(), root / "m.pt")
    return {name: (root / name).read_bytes() for name in ("m.pt2", "m.ts", "m.pt")}


def _entry_edit(blob: bytes, drop: int | None, rename: int | None, add: bytes | None) -> bytes:
    """The zip ``blob`` with an entry dropped, one renamed, or one added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as old, zipfile.ZipFile(out, "w") as new:
        names = old.namelist()
        for index, name in enumerate(names):
            if drop is not None and index == drop % len(names):
                continue
            target = name + "x" if rename is not None and index == rename % len(names) else name
            new.writestr(target, old.read(name))
        if add is not None:
            new.writestr(names[0].partition("/")[0] + "/extra", add)
    return out.getvalue()


@settings(FUZZ, max_examples=30)
@given(
    kind=st.sampled_from(["m.pt2", "m.ts", "m.pt"]),
    how=st.sampled_from(["flip", "cut", "entries"]),
    offset=st.integers(min_value=0, max_value=10**7),
    body=st.binary(min_size=1, max_size=16),
    drop=st.one_of(st.none(), st.integers(0, 40)),
    rename=st.one_of(st.none(), st.integers(0, 40)),
    add=st.one_of(st.none(), st.binary(max_size=16)),
)
def test_any_damaged_model_archive(
    archives: dict[str, bytes],
    kind: str,
    how: str,
    offset: int,
    body: bytes,
    drop: int | None,
    rename: int | None,
    add: bytes | None,
) -> None:
    blob = archives[kind]
    if how == "flip":
        at = offset % len(blob)
        blob = blob[:at] + body + blob[at + len(body) :]
    elif how == "cut":
        blob = blob[: offset % len(blob)]
    else:
        blob = _entry_edit(blob, drop, rename, add)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / kind
        path.write_bytes(blob)
        result = _outcome(lambda: load_model(str(path), arch=ARCH))
        if result is not None:
            model, _, _ = result
            assert isinstance(model, torch.nn.Module) and not model.training
