"""Data read batch by batch: image folders, ``.npz`` archives and Datasets, never whole."""

from __future__ import annotations

import argparse
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import input_error
from PIL import Image, ImageFile

from mlsec.cli.common import Parser
from mlsec.cli.options import add_data_options, parse_size
from mlsec.core.data import Samples, TensorSamples, as_samples, batches
from mlsec.io import load_data
from mlsec.io.npz import NpzSamples

RNG = np.random.default_rng(7)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose pixels Pillow decodes (``ImageFile.load``), in order."""
    seen: list[str] = []
    original = ImageFile.ImageFile.load

    def counting(self: ImageFile.ImageFile) -> Any:
        seen.append(Path(str(self.filename)).name)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return seen


def _folder(root: Path, sizes: list[tuple[int, int]], classes: int = 3) -> list[np.ndarray]:
    """RGB PNGs of the given (width, height), dealt round-robin to ``classes`` class folders.

    Returns the pixels written, in the folder's reading order (by class, then by file name).
    """
    pixels: dict[int, list[np.ndarray]] = {c: [] for c in range(classes)}
    for i, (width, height) in enumerate(sizes):
        label = i % classes
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        array = RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(array, mode="RGB").save(root / str(label) / f"{i:03d}.png")
        pixels[label].append(array)
    return [array for c in range(classes) for array in pixels[c]]


def _chw(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255)


# --- image folders ------------------------------------------------------------------------------


def test_image_folder_is_read_lazily_by_index(tmp_path: Path, decodes: list[str]) -> None:
    written = _folder(tmp_path, [(8, 6)] * 12)
    samples, name, notes = load_data(str(tmp_path))
    assert decodes == []  # headers only while the folder is scanned
    assert len(samples) == 12 and name == tmp_path.name
    assert notes[0].endswith("3-channel 8x6, pixels divided by 255 to [0, 1]")
    x, y = samples.get([5, 0, 7])
    # exactly the files asked for, in order (Pillow calls load() again on a loaded image)
    assert list(dict.fromkeys(decodes)) == ["004.png", "000.png", "010.png"]
    assert x.dtype == torch.float32 and x.shape == (3, 3, 6, 8)
    assert torch.equal(x, _chw([written[5], written[0], written[7]]))
    # files 000, 003, ... are class 0: four per class, in file-name order
    assert y.tolist() == [1, 0, 1]
    assert torch.equal(samples.tensors()[0], _chw(written))


def test_resize_and_center_crop_match_pillow(tmp_path: Path) -> None:
    _folder(tmp_path, [(40, 30), (30, 50), (64, 64)], classes=1)
    files = sorted((tmp_path / "0").iterdir())
    samples, _, notes = load_data(str(tmp_path), resize=24, center_crop=20)
    x, _ = samples.get([0, 1, 2])
    assert x.shape == (3, 3, 20, 20)
    assert notes[2] == (
        "each image resized (bilinear) so the shorter side is 24, "
        "then center-cropped to 20x20 (width x height)"
    )
    assert notes[0].endswith("3-channel 20x20, pixels divided by 255 to [0, 1]")
    # By hand (width x height): 40x30 -> shorter side 24 -> 32x24, the crop's left and top at
    # (32-20)/2 and (24-20)/2; 30x50 -> 24x40, at 4/2 and 20/2; 64x64 -> 24x24, at 2/2 and 2/2.
    boxes = [((32, 24), (6, 2)), ((24, 40), (2, 10)), ((24, 24), (2, 2))]
    for row, file, ((w, h), (left, top)) in zip(x, files, boxes, strict=True):
        with Image.open(file) as image:
            own = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        own = own.crop((left, top, left + 20, top + 20))
        assert torch.equal(row, _chw([np.asarray(own)])[0])
    exact, _, _ = load_data(str(tmp_path), resize=(16, 20))
    assert exact.get([1])[0].shape == (1, 3, 16, 20)
    with Image.open(files[1]) as image:
        own = image.convert("RGB").resize((20, 16), Image.Resampling.BILINEAR)
    assert torch.equal(exact.get([1])[0], _chw([np.asarray(own)]))


def test_images_of_224_pixels(tmp_path: Path) -> None:
    written = _folder(tmp_path, [(224, 224)] * 2, classes=2)
    samples, _, _ = load_data(str(tmp_path))
    x, y = samples.tensors()
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]
    assert torch.equal(x, _chw(written))


def test_sizes_that_do_not_fit_are_refused_up_front(tmp_path: Path, decodes: list[str]) -> None:
    _folder(tmp_path, [(40, 30), (30, 50)], classes=1)
    where = str(tmp_path)
    input_error(lambda: load_data(where), "images differ in size: 0/001.png is 30x50 but")
    input_error(
        lambda: load_data(where, resize=24),
        "images differ in size after resizing: 0/001.png is 24x40 but 0/000.png is 32x24",
        "give a center crop too",
    )
    input_error(
        lambda: load_data(where, resize=24, center_crop=(30, 20)),
        "image 0/000.png is 32x24 (width x height) after resizing, smaller than the center "
        "crop of height 30 and width 20",
    )
    assert decodes == []
    error = input_error(lambda: load_data("mnist-sample", resize=24), "image folders only")
    assert error.startswith("resize: ")


def test_an_image_broken_past_its_header_is_named_when_read(tmp_path: Path) -> None:
    _folder(tmp_path, [(8, 6)] * 4, classes=2)
    bad = tmp_path / "1" / "003.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header survives, the pixels do not
    samples, _, _ = load_data(str(tmp_path))
    assert samples.get([0, 1])[0].shape == (2, 3, 6, 8)
    for workers in (0, 2):

        def read(workers: int = workers) -> None:
            list(batches(samples, [0, 3, 2], 2, workers=workers))

        message = input_error(read, f"data: {tmp_path}: cannot read image 1/003.png")
        assert "Traceback" not in message


# --- .npz archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("kind", ["uint8 nhwc", "float32 nchw"])
def test_npz_read_lazily_equals_numpy(compressed: bool, kind: str, tmp_path: Path) -> None:
    images: np.ndarray
    if kind == "uint8 nhwc":
        images = RNG.integers(0, 256, size=(20, 5, 7, 3), dtype=np.uint8)
        expected = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    else:
        images = RNG.random((20, 2, 5, 7), dtype=np.float32)
        expected = images
    labels = RNG.integers(0, 10, size=20)
    path = tmp_path / "data.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=images, y=labels)
    samples, _, notes = load_data(str(path))
    assert isinstance(samples, NpzSamples)
    order = [17, 3, 3, 0, 19]
    x, y = samples.get(order)
    assert torch.equal(x, torch.from_numpy(expected[order]))
    assert y.tolist() == labels[order].tolist() and y.dtype == torch.int64
    with np.load(path, allow_pickle=False) as eager:  # the same values numpy reads whole
        assert np.array_equal(eager["x"][order], images[order])
    if compressed:  # extracted to a temporary .npy, mapped from there
        assert samples.array.path != path and samples.array.path.suffix == ".npy"
        assert any("x is compressed: extracted to" in note for note in notes)
    else:  # mapped in place, inside the archive
        assert samples.array.path == path and samples.array.offset > 0


def test_npz_damaged_inside_x_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((50, 1, 8, 8), np.uint8), y=np.zeros(50, np.int64))
    blob = bytearray(path.read_bytes())
    blob[2000] ^= 0xFF  # a pixel of x, well past its headers: numpy's own reader checks the CRC
    path.write_bytes(bytes(blob))
    input_error(lambda: load_data(str(path)), "cannot read array 'x': bad CRC-32")


# --- Datasets and DataLoaders ---------------------------------------------------------------------


def test_a_dataset_entry_point_is_read_by_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"datamod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Counted(torch.utils.data.Dataset):
                def __init__(self):
                    self.reads = []

                def __len__(self):
                    return 10

                def __getitem__(self, index):
                    self.reads.append(index)
                    return torch.full((1, 2, 2), index / 10), index

            made = []

            def load():
                made.append(Counted())
                return made[-1]

            def loader():
                return torch.utils.data.DataLoader(load(), batch_size=3, shuffle=True)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    for entry in ("load", "loader"):
        samples, _, _ = load_data(f"{name}:{entry}")
        dataset = __import__(name).made[-1]
        assert dataset.reads == [] and len(samples) == 10
        x, y = samples.get([4, 1, 8])
        assert dataset.reads == [4, 1, 8]  # batch size and shuffling of a loader do not matter
        assert y.tolist() == [4, 1, 8] and torch.allclose(
            x[:, 0, 0, 0], torch.tensor([0.4, 0.1, 0.8])
        )
        assert [b.index.tolist() for b in batches(samples.subset(range(5)), range(5), 2)] == [
            [0, 1],
            [2, 3],
            [4],
        ]
        assert dataset.reads[3:] == [0, 1, 2, 3, 4]


def test_an_iterable_dataset_is_read_whole() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for i in range(3):
                yield torch.full((2, 3), float(i)), torch.tensor([i, i + 1])

    samples = as_samples(torch.utils.data.DataLoader(Stream(), batch_size=None))
    assert isinstance(samples, TensorSamples)
    assert samples.y.tolist() == [0, 1, 1, 2, 2, 3] and samples.x[5].tolist() == [2.0] * 3


# --- batches ------------------------------------------------------------------------------------


def test_batches_with_workers_equal_batches_without(tmp_path: Path) -> None:
    _folder(tmp_path, [(6, 5)] * 11, classes=2)
    samples, _, _ = load_data(str(tmp_path))
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    serial = list(batches(samples, order, 4))
    parallel = list(batches(samples, order, 4, workers=2))
    assert [len(b.index) for b in serial] == [4, 4, 3]
    assert torch.equal(torch.cat([b.index for b in serial]), order)
    assert len(parallel) == len(serial)
    for one, other in zip(serial, parallel, strict=True):
        assert torch.equal(one.index, other.index)
        assert torch.equal(one.x, other.x) and torch.equal(one.y, other.y)
        assert torch.equal(one.x, samples.get(one.index.tolist())[0])


class Shaped(torch.utils.data.Dataset):
    """Twelve items, spoiled from index ``at`` on in the way ``how`` names."""

    def __init__(self, how: str, at: int) -> None:
        self.how, self.at = how, at

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        x: torch.Tensor = torch.zeros(1, 3, 3)
        label: Any = 1
        if index >= self.at:
            if self.how == "nan":
                x[0, 1, 1] = float("nan")
            elif self.how == "shape":
                x = torch.zeros(1, 4, 4)
            elif self.how == "integer":
                x = torch.zeros(1, 3, 3, dtype=torch.uint8)
            else:
                label = 0.5
        return x, label


@pytest.mark.parametrize(
    ("how", "at", "message"),
    [
        ("nan", 9, "data: inputs contain NaN or infinite values (first at sample 9)"),
        ("shape", 9, "data: sample 9 has shape (1, 4, 4) but the first batch's samples have"),
        ("integer", 0, "data: inputs must be floating point within the bounds (got torch.uint8)"),
        ("float label", 0, "data: labels must be integers (got torch.float32)"),
    ],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_batches_are_one_line_errors(how: str, at: int, message: str, workers: int) -> None:
    samples = as_samples(Shaped(how, at=at))
    order = [0, 1, 2, 9, 10, 11] if how == "shape" else [0, 1, 2, 3, 9, 4]
    seen: list[list[int]] = []

    def read() -> None:
        for batch in batches(samples, order, 3, workers=workers):
            seen.append(batch.index.tolist())

    input_error(read, message)
    assert seen == ([[0, 1, 2]] if how in ("nan", "shape") else [])


def test_subsets_and_tensors_keep_the_data_set_s_indices() -> None:
    x, y = torch.rand(9, 2, 2), torch.arange(9)
    samples: Samples = TensorSamples(x, y)
    first = samples.subset(range(4))
    assert len(first) == 4 and torch.equal(first.tensors()[0], x[:4])
    lazy = as_samples(torch.utils.data.TensorDataset(x, y)).subset([8, 2])
    assert lazy.get([1, 0])[1].tolist() == [2, 8]
    assert torch.equal(lazy.tensors()[0], x[[8, 2]])


# --- command-line options -----------------------------------------------------------------------


def test_size_option_parsing() -> None:
    assert parse_size("224") == 224 and parse_size("224x200") == (224, 200)
    for bad in ("0", "abc", "224x", "x224", "-3", "2x3x4", "100000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    parser = Parser(prog="mlsec audit")
    add_data_options(parser.add_argument_group("data"))
    args = parser.parse_args(["--workers", "3", "--resize", "256", "--center-crop", "224x224"])
    assert (args.workers, args.resize, args.center_crop) == (3, 256, (224, 224))
    assert parser.parse_args([]).workers == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--resize", "big"], "argument --resize: expected a size such as 224 or 224x224"),
        (["--center-crop", "0x4"], "argument --center-crop: sides must lie in 1..65536"),
        (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    ],
)
def test_bad_data_options_exit_2_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = Parser(prog="mlsec audit")
    add_data_options(parser.add_argument_group("data"))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
